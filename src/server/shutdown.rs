//! Signals for `serve` (SPEC §1.3): SIGINT/SIGTERM ask for a graceful stop, SIGHUP for a
//! connector-file reload. This is tokio's one job in the daemon: a current-thread runtime on its
//! own thread turns signals into messages on a std channel that the main thread waits on.

use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::signal::unix::{signal, SignalKind};

/// What the main thread is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Stop gracefully; the signal's name.
    Shutdown(&'static str),
    /// Reload the connector file.
    Reload,
}

/// The signal thread; dropping or calling [`Signals::stop`] ends it.
pub struct Signals {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Signals {
    /// Installs the handlers before returning (so a signal sent right after readiness is never
    /// lost to the default action) and starts forwarding them to `tx`.
    pub fn install(tx: mpsc::Sender<Control>) -> std::io::Result<Signals> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (mut term, mut int, mut hup) = rt.block_on(async {
            Ok::<_, std::io::Error>((
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
                signal(SignalKind::hangup())?,
            ))
        })?;
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                rt.block_on(async move {
                    loop {
                        let msg = tokio::select! {
                            _ = term.recv() => Control::Shutdown("SIGTERM"),
                            _ = int.recv() => Control::Shutdown("SIGINT"),
                            _ = hup.recv() => Control::Reload,
                            _ = &mut stopped => return,
                        };
                        if tx.send(msg).is_err() {
                            return;
                        }
                    }
                });
            })?;
        Ok(Signals {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Ends the signal thread and joins it.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        self.stop_inner();
    }
}
