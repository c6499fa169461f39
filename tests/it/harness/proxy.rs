//! A TCP proxy between jobd and its Redis that misbehaves on cue, as a network does: it can
//! lose replies (Redis runs the command, its caller never hears back), or hold a command back
//! for a while (it reaches Redis late, after commands sent later on other connections).

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Notify,
    task::JoinSet,
};

/// The proxy; it stops, with every connection through it, when dropped.
pub struct FaultyProxy {
    addr: SocketAddr,
    /// What the next connection to send the fault's bytes suffers.
    fault: Arc<Mutex<Option<Fault>>>,
    /// Told when the connection that lost replies closes.
    closed: Arc<Notify>,
    /// Told when a connection sent the armed fault's bytes.
    struck: Arc<Notify>,
    _connections: JoinSet<()>,
}

/// A fault armed on bytes a connection sends.
#[derive(Clone)]
enum Fault {
    /// The connection loses the reply to the command and every reply after it.
    LoseReplies(Vec<u8>),
    /// The command (and whatever follows it on the connection) reaches Redis this much later.
    Delay(Vec<u8>, Duration),
}

impl Fault {
    fn bytes(&self) -> &[u8] {
        match self {
            Fault::LoseReplies(bytes) | Fault::Delay(bytes, _) => bytes,
        }
    }
}

impl FaultyProxy {
    /// A proxy on a free local port to the Redis at `redis_port`.
    pub async fn start(redis_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the proxy binds");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let fault = Arc::new(Mutex::new(None));
        let closed = Arc::new(Notify::new());
        let struck = Arc::new(Notify::new());
        let mut connections = JoinSet::new();
        let (armed, told, hit) = (fault.clone(), closed.clone(), struck.clone());
        connections.spawn(async move {
            let mut relays = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let redis = TcpStream::connect(("127.0.0.1", redis_port))
                    .await
                    .expect("Redis accepts the proxy's connection");
                let notices = Notices {
                    closed: told.clone(),
                    struck: hit.clone(),
                };
                relays.spawn(relay(client, redis, armed.clone(), notices));
            }
        });
        Self {
            addr,
            fault,
            closed,
            struck,
            _connections: connections,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// The next connection to send `bytes` (within one command, as fred writes it) loses the
    /// reply to that command and every reply after it, until jobd gives the connection up.
    pub fn lose_replies_after(&self, bytes: &[u8]) {
        *self.fault.lock().unwrap() = Some(Fault::LoseReplies(bytes.to_vec()));
    }

    /// The next command to hold `bytes` reaches Redis `delay` late, and the commands after it on
    /// its connection after it; the connection's replies are not held.
    pub fn delay(&self, bytes: &[u8], delay: Duration) {
        *self.fault.lock().unwrap() = Some(Fault::Delay(bytes.to_vec(), delay));
    }

    /// Waits, 10 s at most, until a connection sent the armed fault's bytes.
    pub async fn struck(&self) {
        tokio::time::timeout(Duration::from_secs(10), self.struck.notified())
            .await
            .expect("the fault's bytes went by");
    }

    /// Waits, 10 s at most, until the connection that lost replies is closed: jobd gave it up
    /// (it stopped answering) and uses a new one.
    pub async fn lossy_connection_closed(&self) {
        tokio::time::timeout(Duration::from_secs(10), self.closed.notified())
            .await
            .expect("jobd closes a connection that stopped answering");
    }
}

/// Whom a connection tells of what befell it.
struct Notices {
    closed: Arc<Notify>,
    struck: Arc<Notify>,
}

/// Carries one connection's bytes both ways, suffering the armed fault once its bytes go by.
async fn relay(
    client: TcpStream,
    redis: TcpStream,
    fault: Arc<Mutex<Option<Fault>>>,
    notices: Notices,
) {
    let Notices { closed, struck } = notices;
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_redis, mut to_redis) = redis.into_split();
    let losing = Arc::new(AtomicBool::new(false));
    let (lose, lost) = (losing.clone(), losing.clone());
    let requests = async move {
        let mut buffer = vec![0; 64 * 1024];
        while let Ok(read @ 1..) = from_client.read(&mut buffer).await {
            let chunk = &buffer[..read];
            let suffered = {
                let mut armed = fault.lock().unwrap();
                let hit = armed.as_ref().is_some_and(|fault| {
                    let bytes = fault.bytes();
                    chunk.windows(bytes.len()).any(|window| window == bytes)
                });
                if hit { armed.take() } else { None }
            };
            if suffered.is_some() {
                struck.notify_one();
            }
            match suffered {
                // Before the command reaches Redis, so that its reply is lost too.
                Some(Fault::LoseReplies(_)) => lose.store(true, Ordering::SeqCst),
                // The fault itself: the command is held back as a slow network would.
                Some(Fault::Delay(_, delay)) => tokio::time::sleep(delay).await,
                None => {}
            }
            if to_redis.write_all(chunk).await.is_err() {
                break;
            }
        }
    };
    let replies = async move {
        let mut buffer = vec![0; 64 * 1024];
        while let Ok(read @ 1..) = from_redis.read(&mut buffer).await {
            if !losing.load(Ordering::SeqCst) && to_client.write_all(&buffer[..read]).await.is_err()
            {
                break;
            }
        }
    };
    // Either side closing ends the connection, as a dropped TCP connection would; a command
    // held back is still delivered (it was on its way).
    tokio::pin!(requests);
    let requests_ended = tokio::select! {
        () = &mut requests => true,
        () = replies => false,
    };
    if !requests_ended {
        // jobd gave the connection up: a held command still reaches Redis, late.
        let _ = tokio::time::timeout(Duration::from_secs(30), requests).await;
    }
    if lost.load(Ordering::SeqCst) {
        closed.notify_one();
    }
}
