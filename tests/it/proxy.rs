//! A TCP proxy between jobd and its Redis that can lose replies, as a network that fails after
//! a request went through does: Redis runs the command, its caller never hears back.

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
pub struct ReplyLosingProxy {
    addr: SocketAddr,
    /// Bytes that, once a connection sends them, make it lose every reply from then on.
    trigger: Arc<Mutex<Option<Vec<u8>>>>,
    /// Told when the connection that lost replies closes.
    closed: Arc<Notify>,
    _connections: JoinSet<()>,
}

impl ReplyLosingProxy {
    /// A proxy on a free local port to the Redis at `redis_port`.
    pub async fn start(redis_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the proxy binds");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let trigger = Arc::new(Mutex::new(None));
        let closed = Arc::new(Notify::new());
        let mut connections = JoinSet::new();
        let (armed, told) = (trigger.clone(), closed.clone());
        connections.spawn(async move {
            let mut relays = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let redis = TcpStream::connect(("127.0.0.1", redis_port))
                    .await
                    .expect("Redis accepts the proxy's connection");
                relays.spawn(relay(client, redis, armed.clone(), told.clone()));
            }
        });
        Self {
            addr,
            trigger,
            closed,
            _connections: connections,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// The next connection to send `bytes` (within one command, as fred writes it) loses the
    /// reply to that command and every reply after it, until jobd gives the connection up.
    pub fn lose_replies_after(&self, bytes: &[u8]) {
        *self.trigger.lock().unwrap() = Some(bytes.to_vec());
    }

    /// Disarms `lose_replies_after` if no connection has sent its bytes yet.
    pub fn lose_no_replies(&self) {
        *self.trigger.lock().unwrap() = None;
    }

    /// Waits, 10 s at most, until the connection that lost replies is closed: jobd gave it up
    /// (it stopped answering) and uses a new one.
    pub async fn lossy_connection_closed(&self) {
        tokio::time::timeout(Duration::from_secs(10), self.closed.notified())
            .await
            .expect("jobd closes a connection that stopped answering");
    }
}

/// Carries one connection's bytes both ways, dropping Redis's once the trigger was sent.
async fn relay(
    client: TcpStream,
    redis: TcpStream,
    trigger: Arc<Mutex<Option<Vec<u8>>>>,
    closed: Arc<Notify>,
) {
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_redis, mut to_redis) = redis.into_split();
    let losing = Arc::new(AtomicBool::new(false));
    let (lose, lost) = (losing.clone(), losing.clone());
    let requests = async move {
        let mut buffer = vec![0; 64 * 1024];
        while let Ok(read @ 1..) = from_client.read(&mut buffer).await {
            let chunk = &buffer[..read];
            {
                let mut trigger = trigger.lock().unwrap();
                if let Some(bytes) = trigger.as_deref()
                    && chunk.windows(bytes.len()).any(|window| window == bytes)
                {
                    // Before the command reaches Redis, so that its reply is lost too.
                    lose.store(true, Ordering::SeqCst);
                    *trigger = None;
                }
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
    // Either side closing ends the connection, as a dropped TCP connection would.
    tokio::select! {
        () = requests => {}
        () = replies => {}
    }
    if lost.load(Ordering::SeqCst) {
        closed.notify_one();
    }
}
