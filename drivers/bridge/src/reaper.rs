//! Deletes links off DetachPod's critical path.
//!
//! Deleting a veth costs about 20 ms here, nearly all of it after the link is unhooked: the
//! kernel waits for RCU grace periods and for the device's last references before the request
//! returns, and the socket that sent it is held all that time (the request runs in the
//! sender's `sendmsg`). On the driver's own connection that would stall every other netlink
//! request, so the reaper has a thread and a connection of its own. Whatever queues up while
//! one deletion runs goes together next, in one request (the links are put in a group and the
//! group is deleted): a burst of detaches pays for one wait, not one each.

use std::sync::mpsc;

use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::LinkUnspec;
use tokio::sync::oneshot;

use crate::netlink::{self, Netlink, NlError, NlResult, errno};

/// The link group the reaper puts links in before deleting the group ("nlrp"): links of other
/// software are never in it.
pub const GROUP: u32 = 0x6e6c_7270;

struct Job {
    names: Vec<String>,
    done: oneshot::Sender<NlResult<()>>,
}

/// Handle to the reaper thread.
pub struct Reaper {
    jobs: mpsc::Sender<Job>,
}

impl Reaper {
    /// Starts the thread, with a netlink connection in the calling thread's namespace.
    pub fn start() -> NlResult<Self> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("netlet-reaper".into())
            .spawn(move || {
                // (A new thread is in the namespace of the thread that made it.)
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let nl = match rt.block_on(async { Netlink::connect() }) {
                    Ok(nl) => nl,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    let names: Vec<&String> = batch.iter().flat_map(|j| &j.names).collect();
                    let res = rt.block_on(reap(&nl, &names));
                    for j in batch {
                        let _ = j.done.send(res.as_ref().map(|_| ()).map_err(|e| NlError {
                            what: e.what.clone(),
                            errno: e.errno,
                            message: e.message.clone(),
                        }));
                    }
                }
            })
            .map_err(|e| NlError {
                what: "start the reaper thread".into(),
                errno: None,
                message: e.to_string(),
            })?;
        let failed = |message: String| NlError {
            what: "reaper netlink connection".into(),
            errno: None,
            message,
        };
        match ready.recv() {
            Ok(Ok(())) => Ok(Self { jobs }),
            Ok(Err(message)) => Err(failed(message)),
            Err(_) => Err(failed("the reaper thread died".into())),
        }
    }

    /// Deletes the links `names` (missing ones are fine); returns once they are gone.
    pub async fn delete(&self, names: Vec<String>) -> NlResult<()> {
        let gone = || NlError {
            what: "reaper".into(),
            errno: None,
            message: "the reaper thread stopped".into(),
        };
        let (done, wait) = oneshot::channel();
        self.jobs.send(Job { names, done }).map_err(|_| gone())?;
        wait.await.map_err(|_| gone())?
    }
}

async fn reap(nl: &Netlink, names: &[&String]) -> NlResult<()> {
    if names.len() <= 2 {
        for n in names {
            nl.delete_link(n).await?;
        }
        return Ok(());
    }
    let mut grouped = false;
    for n in names {
        let mut m = LinkUnspec::new_with_name(n).build();
        m.attributes.push(LinkAttribute::Group(GROUP));
        match nl.handle().link().set(m).execute().await {
            Ok(()) => grouped = true,
            Err(e) => {
                let e = netlink::nl(format!("put {n} in the reaper's group"))(e);
                if e.errno != Some(errno::ENODEV) {
                    return Err(e);
                }
            }
        }
    }
    if !grouped {
        return Ok(());
    }
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::Group(GROUP));
    match nl.handle().link().del_with_message(m).execute().await {
        Ok(()) => Ok(()),
        Err(e) => {
            let e = netlink::nl("delete the reaper's group")(e);
            if e.errno == Some(errno::ENODEV) {
                Ok(())
            } else {
                Err(e)
            }
        }
    }
}
