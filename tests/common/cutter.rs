//! A TCP proxy in front of a server that drops every connection it carries on demand, and
//! refuses new ones for as long as a test says.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// A TCP proxy in front of a server whose [`Cutter::cut`] drops every connection it carries,
/// as a load balancer or a network failure would, without a word to either side.
pub struct Cutter {
    /// Where clients connect to reach the server through it.
    pub addr: SocketAddr,
    generation: Arc<watch::Sender<u64>>,
    refusing: Arc<AtomicBool>,
}

impl Cutter {
    /// A proxy to `upstream` on an ephemeral port.
    pub async fn start(upstream: SocketAddr) -> Cutter {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("an address");
        let generation = Arc::new(watch::channel(0u64).0);
        let cuts = generation.clone();
        let refusing = Arc::new(AtomicBool::new(false));
        let refused = refusing.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if refused.load(Ordering::SeqCst) {
                    continue;
                }
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Cutter {
            addr,
            generation,
            refusing,
        }
    }

    /// Drops every connection open now.
    pub fn cut(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Drops every connection open now, and every new one until [`Cutter::admit`]: the client
    /// stays away while the gateway goes on logging its session's events.
    pub fn cut_and_refuse(&self) {
        self.refusing.store(true, Ordering::SeqCst);
        self.cut();
    }

    /// Lets new connections through again.
    pub fn admit(&self) {
        self.refusing.store(false, Ordering::SeqCst);
    }
}
