//! A TCP proxy a test controls, in front of a real server: open (bytes pass), frozen
//! (connections stay up and new ones are accepted, but no byte passes either way: a peer
//! that hangs), or cut (every connection is dropped and new ones are closed at once: a
//! peer that went away). It runs on a thread of its own, so a test that blocks its own
//! runtime (a restart that waits, a `std::thread::sleep`) does not freeze it by accident.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Open,
    Frozen,
    Cut,
}

pub struct Proxy {
    ip: String,
    port: u16,
    mode: watch::Sender<Mode>,
}

impl Proxy {
    /// Listen on a free loopback port and forward to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> Proxy {
        Self::start_on("127.0.0.1", upstream)
    }

    /// Listen on a free port of address `ip` and forward to `upstream` (`host:port`).
    pub fn start_on(ip: &str, upstream: &str) -> Proxy {
        let std_listener = std::net::TcpListener::bind((ip, 0)).unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let port = std_listener.local_addr().unwrap().port();
        let (mode, watcher) = watch::channel(Mode::Open);
        let upstream = upstream.to_string();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).unwrap();
                let mut ended = watcher.clone();
                loop {
                    let accepted = tokio::select! {
                        a = listener.accept() => a,
                        r = ended.changed() => match r {
                            Ok(()) => continue,
                            Err(_) => return, // the Proxy was dropped
                        },
                    };
                    let Ok((client, _)) = accepted else {
                        continue;
                    };
                    if *watcher.borrow() == Mode::Cut {
                        drop(client);
                        continue;
                    }
                    let (upstream, watcher) = (upstream.clone(), watcher.clone());
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(&upstream).await else {
                            return;
                        };
                        let (cr, cw) = client.into_split();
                        let (sr, sw) = server.into_split();
                        tokio::select! {
                            _ = pump(cr, sw, watcher.clone()) => {}
                            _ = pump(sr, cw, watcher) => {}
                        }
                    });
                }
            });
        });
        Proxy {
            ip: ip.to_string(),
            port,
            mode,
        }
    }

    /// `host:port` to give a client instead of the upstream's.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

/// Copy one direction until either side closes or the proxy is cut; while frozen, hold
/// what was read.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = cut(&mut mode) => return,
        };
        loop {
            let now = *mode.borrow_and_update();
            match now {
                Mode::Open => break,
                Mode::Cut => return,
                Mode::Frozen => {
                    // Wait for a change, or the Proxy's end.
                    if tokio::time::timeout(Duration::from_secs(3600), mode.changed())
                        .await
                        .map_or(true, |r| r.is_err())
                    {
                        return;
                    }
                }
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Resolves once the mode is Cut (or the Proxy is gone).
async fn cut(mode: &mut watch::Receiver<Mode>) {
    loop {
        if *mode.borrow_and_update() == Mode::Cut {
            return;
        }
        if mode.changed().await.is_err() {
            return;
        }
    }
}
