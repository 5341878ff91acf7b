//! A TCP proxy whose cuts drop every connection it carries mid-stream.

use std::{net::SocketAddr, sync::Arc};

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
}

impl Cutter {
    /// A proxy to `upstream` on an ephemeral port.
    pub async fn start(upstream: SocketAddr) -> Cutter {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("an address");
        let generation = Arc::new(watch::channel(0u64).0);
        let cuts = generation.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
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
        Cutter { addr, generation }
    }

    /// Drops every connection open now.
    pub fn cut(&self) {
        self.generation.send_modify(|g| *g += 1);
    }
}
