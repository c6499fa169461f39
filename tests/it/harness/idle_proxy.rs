//! A TCP proxy that cuts idle connections, as most load balancers do: a connection through
//! which no byte went either way for its idle timeout is closed, both sides.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinSet,
};

/// The proxy; it stops, with every connection through it, when dropped.
pub struct IdleCuttingProxy {
    addr: SocketAddr,
    cuts: Arc<AtomicUsize>,
    _connections: JoinSet<()>,
}

impl IdleCuttingProxy {
    /// A proxy on a free local port to `target`, cutting connections idle for `idle`.
    pub async fn start(target: SocketAddr, idle: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cuts = Arc::new(AtomicUsize::new(0));
        let counted = cuts.clone();
        let mut connections = JoinSet::new();
        connections.spawn(async move {
            let mut relays = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                relays.spawn(relay(client, server, idle, counted.clone()));
            }
        });
        Self {
            addr,
            cuts,
            _connections: connections,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many connections it cut for being idle.
    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }
}

/// Carries one connection's bytes both ways until either side closes or it is idle too long.
async fn relay(client: TcpStream, server: TcpStream, idle: Duration, cuts: Arc<AtomicUsize>) {
    let started = Instant::now();
    // Milliseconds since `started` when a byte last went through.
    let last = Arc::new(AtomicU64::new(0));
    let (from_client, to_client) = client.into_split();
    let (from_server, to_server) = server.into_split();
    let watchdog = async {
        loop {
            // Pacing the check: once a second is fine for a 60 s timeout.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let quiet = started.elapsed().as_millis() as u64 - last.load(Ordering::SeqCst);
            if quiet >= idle.as_millis() as u64 {
                cuts.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
    };
    // Whichever ends first drops every half: both sockets close.
    tokio::select! {
        () = copy(from_client, to_server, started, &last) => {}
        () = copy(from_server, to_client, started, &last) => {}
        () = watchdog => {}
    }
}

async fn copy(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    started: Instant,
    last: &AtomicU64,
) {
    let mut buffer = vec![0; 64 * 1024];
    while let Ok(read @ 1..) = from.read(&mut buffer).await {
        last.store(started.elapsed().as_millis() as u64, Ordering::SeqCst);
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
