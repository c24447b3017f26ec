//! Many events at once, in order where order matters.
//!
//! A lane takes the events of one ordered stream (a Kafka partition, a queue, the metadata
//! log) and runs up to `concurrency` of them at a time. An event waits for every earlier
//! unfinished event it is related to: one on the same path, or on an ancestor or a
//! descendant of one of its paths (a rename has two). So the events of one file stay in
//! queue order, a directory is created before its children, and a rename or delete of a
//! directory is a barrier for everything under it, while unrelated files proceed side by
//! side. Events whose paths are unknown (undecodable messages) relate to nothing.
//!
//! Progress is reported as a prefix: `prefix(token)` is called when every event up to and
//! including that one has finished, in stream order, which is what an offset or a
//! checkpoint may record. An event that did not reach the sink ends the prefix: one
//! abandoned or stopped, and, under [`Holds::Freeze`], one held by the failure policy,
//! after which the lane goes on but reports no more progress.

use crate::event::RawEvent;
use crate::pipeline::Disposition;
use futures::StreamExt;
use std::collections::VecDeque;
use tokio::sync::mpsc;

/// How a lane ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LaneEnd {
    /// The input closed the stream and everything finished.
    Closed,
    /// Shutdown (or its grace ending) interrupted it.
    Abandoned,
    /// A bad message under `bad_message = "stop"`.
    Stopped,
}

use crate::event::conflict;
pub use crate::event::paths_of;

/// What a [`Disposition::Held`] event does to the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Holds {
    /// The prefix stops before it for the rest of the lane, so that an offset or a
    /// checkpoint never passes it and it comes again at the next start (Kafka, the
    /// metadata log). Later events still run.
    Freeze,
    /// It counts as progress: the input keeps it by other means (a queue leaves the
    /// message unacknowledged; a sink's backlog keeps the event itself).
    Report,
}

struct Slot<T> {
    token: T,
    paths: Vec<String>,
    /// Not yet started: the event itself.
    event: Option<RawEvent>,
    finished: bool,
    /// Finished without reaching the sink (abandoned, or a bad message that stops the
    /// lane): not progress, and nothing after it is either.
    unfinished_work: bool,
    /// Held by the failure policy (see [`Holds`]).
    held: bool,
}

/// Run the events from `rx` through `start` (at most `concurrency` at once, in order where
/// they are related) until `rx` closes or an event ends the lane. Returns how it ended and
/// the tokens of events received but never started, including those already waiting in
/// `rx` (for the input to release); `rx` itself is left open.
pub(crate) async fn run<T, F, Fut>(
    rx: &mut mpsc::Receiver<(T, RawEvent)>,
    concurrency: usize,
    holds: Holds,
    mut start: F,
    mut prefix: impl FnMut(&T),
) -> (LaneEnd, Vec<T>)
where
    T: Clone,
    F: FnMut(T, RawEvent) -> Fut,
    Fut: std::future::Future<Output = Option<Disposition>>,
{
    let concurrency = concurrency.max(1);
    let mut window: VecDeque<Slot<T>> = VecDeque::new();
    // Sequence number of window[0].
    let mut base: u64 = 0;
    let mut running = futures::stream::FuturesUnordered::new();
    let mut open = true;
    let mut end = LaneEnd::Closed;
    // A held event was passed under `Holds::Freeze`: no more progress.
    let mut frozen = false;
    loop {
        // Start whatever may start, in order.
        if end == LaneEnd::Closed {
            for i in 0..window.len() {
                if window[i].event.is_none() || running.len() >= concurrency {
                    continue;
                }
                let blocked = (0..i)
                    .any(|j| !window[j].finished && conflict(&window[j].paths, &window[i].paths));
                if blocked {
                    continue;
                }
                let event = window[i].event.take().expect("not started");
                let seq = base + i as u64;
                let fut = start(window[i].token.clone(), event);
                running.push(async move { (seq, fut.await) });
            }
        }
        if running.is_empty() && (!open || end != LaneEnd::Closed) {
            let mut unstarted: Vec<T> = window
                .into_iter()
                .filter(|s| s.event.is_some())
                .map(|s| s.token)
                .collect();
            while let Ok((token, _)) = rx.try_recv() {
                unstarted.push(token);
            }
            return (end, unstarted);
        }
        let room = open && end == LaneEnd::Closed && window.len() < concurrency * 4;
        tokio::select! {
            Some((seq, disposition)) = running.next(), if !running.is_empty() => {
                let i = (seq - base) as usize;
                window[i].finished = true;
                match disposition {
                    Some(Disposition::Done | Disposition::Held) => {}
                    Some(Disposition::Stop) => end = LaneEnd::Stopped,
                    Some(Disposition::Abandoned) | None => {
                        if end == LaneEnd::Closed {
                            end = LaneEnd::Abandoned;
                        }
                    }
                }
                window[i].unfinished_work =
                    !matches!(disposition, Some(Disposition::Done | Disposition::Held));
                window[i].held = disposition == Some(Disposition::Held);
                // Events that finished while others were abandoned (at a shutdown, or when
                // a partition moves to another consumer) still count, up to the first one
                // that did not reach the sink.
                let mut last = None;
                while window
                    .front()
                    .is_some_and(|s| s.finished && !s.unfinished_work)
                {
                    let slot = window.pop_front();
                    base += 1;
                    frozen |= holds == Holds::Freeze && slot.as_ref().is_some_and(|s| s.held);
                    if !frozen {
                        last = slot;
                    }
                }
                if let Some(slot) = last {
                    prefix(&slot.token);
                }
            }
            next = rx.recv(), if room => match next {
                Some((token, event)) => window.push_back(Slot {
                    paths: paths_of(&event),
                    token,
                    event: Some(event),
                    finished: false,
                    unfinished_work: false,
                    held: false,
                }),
                None => open = false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;
    use prost::Message;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    fn create(path: &str) -> RawEvent {
        let (dir, name) = path.rsplit_once('/').unwrap();
        RawEvent::new(
            path,
            pb::EventNotification {
                new_entry: Some(pb::Entry {
                    name: name.into(),
                    ..Default::default()
                }),
                new_parent_path: dir.into(),
                ..Default::default()
            }
            .encode_to_vec(),
        )
    }

    fn rename(from: &str, to: &str) -> RawEvent {
        let (_, old) = from.rsplit_once('/').unwrap();
        let (dir, new) = to.rsplit_once('/').unwrap();
        let dir = if dir.is_empty() { "/" } else { dir };
        RawEvent::new(
            from,
            pb::EventNotification {
                old_entry: Some(pb::Entry {
                    name: old.into(),
                    ..Default::default()
                }),
                new_entry: Some(pb::Entry {
                    name: new.into(),
                    ..Default::default()
                }),
                new_parent_path: dir.into(),
                ..Default::default()
            }
            .encode_to_vec(),
        )
    }

    #[test]
    fn relations() {
        assert!(crate::event::related("/a/b", "/a/b"));
        assert!(crate::event::related("/a", "/a/b/c"));
        assert!(crate::event::related("/a/b/c", "/a"));
        assert!(!crate::event::related("/a/b", "/a/bc"));
        assert!(!crate::event::related("/a/x", "/a/y"));
        assert_eq!(
            paths_of(&rename("/d/a", "/e/b")),
            vec!["/d/a".to_string(), "/e/b".to_string()]
        );
        assert!(paths_of(&RawEvent::new("/x", vec![0xff, 0xff])).is_empty());
    }

    /// Unrelated events overlap; related ones never start before the earlier ones end;
    /// the prefix advances in stream order only.
    #[tokio::test]
    async fn order_where_it_matters() {
        let events = vec![
            create("/d"),       // 0
            create("/d/f1"),    // 1: after 0 (child)
            create("/x/a"),     // 2: free
            create("/x/b"),     // 3: free
            rename("/d", "/e"), // 4: after 0, 1 (barrier)
            create("/e/f2"),    // 5: after 4 (under the new path)
            create("/x/a"),     // 6: after 2 (same path)
        ];
        let (tx, rx) = mpsc::channel(16);
        for (i, e) in events.into_iter().enumerate() {
            tx.send((i, e)).await.unwrap();
        }
        drop(tx);
        let log: Arc<Mutex<Vec<(usize, bool)>>> = Default::default();
        let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let max_in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut prefixes = Vec::new();
        let mut rx = rx;
        let (end, unstarted) = run(
            &mut rx,
            8,
            Holds::Freeze,
            |i: usize, _e| {
                let (log, in_flight, max) = (log.clone(), in_flight.clone(), max_in_flight.clone());
                async move {
                    use std::sync::atomic::Ordering::SeqCst;
                    let now = in_flight.fetch_add(1, SeqCst) + 1;
                    max.fetch_max(now, SeqCst);
                    log.lock().unwrap().push((i, true));
                    // Later events finish sooner, to tempt reordering.
                    tokio::time::sleep(Duration::from_millis(40 - 5 * i as u64)).await;
                    log.lock().unwrap().push((i, false));
                    in_flight.fetch_sub(1, SeqCst);
                    Some(Disposition::Done)
                }
            },
            |i| prefixes.push(*i),
        )
        .await;
        assert_eq!(end, LaneEnd::Closed);
        assert!(unstarted.is_empty());
        let log = log.lock().unwrap().clone();
        let pos = |i: usize, start: bool| log.iter().position(|e| *e == (i, start)).unwrap();
        for (before, after) in [(0, 1), (0, 4), (1, 4), (4, 5), (2, 6)] {
            assert!(
                pos(before, false) < pos(after, true),
                "{after} started before {before} ended: {log:?}"
            );
        }
        assert!(
            max_in_flight.load(std::sync::atomic::Ordering::SeqCst) >= 2,
            "nothing overlapped"
        );
        assert!(prefixes.windows(2).all(|w| w[0] < w[1]), "{prefixes:?}");
        assert_eq!(prefixes.last(), Some(&6));
    }

    #[tokio::test]
    async fn work_that_finishes_after_an_abandoned_event_counts_up_to_it() {
        let (tx, rx) = mpsc::channel(16);
        for i in 0..4usize {
            tx.send((i, create(&format!("/d{i}/f")))).await.unwrap();
        }
        drop(tx);
        let mut prefixes = Vec::new();
        let mut rx = rx;
        let (end, _) = run(
            &mut rx,
            4,
            Holds::Freeze,
            |i: usize, _| async move {
                if i == 2 {
                    // Abandoned at once (a revoke or shutdown), while 0, 1 and 3 still run.
                    return None;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                Some(Disposition::Done)
            },
            |i| prefixes.push(*i),
        )
        .await;
        assert_eq!(end, LaneEnd::Abandoned);
        // 0 and 1 finished (in either order); 2 did not, so 3 does not count either.
        assert_eq!(prefixes.last(), Some(&1), "{prefixes:?}");
        assert!(prefixes.iter().all(|p| *p <= 1), "{prefixes:?}");
    }

    #[tokio::test]
    async fn a_stop_ends_the_lane_and_returns_what_never_started() {
        let (tx, rx) = mpsc::channel(16);
        for i in 0..5usize {
            tx.send((
                i,
                create(&format!("/same/{}", if i == 1 { "x" } else { "y" })),
            ))
            .await
            .unwrap();
        }
        drop(tx);
        let mut prefixes = Vec::new();
        let mut rx = rx;
        let (end, unstarted) = run(
            &mut rx,
            1,
            Holds::Freeze,
            |i: usize, _| async move {
                Some(if i == 1 {
                    Disposition::Stop
                } else {
                    Disposition::Done
                })
            },
            |i| prefixes.push(*i),
        )
        .await;
        assert_eq!(end, LaneEnd::Stopped);
        assert_eq!(
            prefixes,
            vec![0],
            "nothing at or after the stop is progress"
        );
        assert_eq!(unstarted, vec![2, 3, 4]);
    }

    /// A held event ends the prefix for good under `Freeze` (later events still run and
    /// finish), and is progress like any other under `Report`.
    #[tokio::test]
    async fn a_held_event_freezes_the_prefix_or_is_reported() {
        for (holds, want) in [
            (Holds::Freeze, vec![0, 1]),
            (Holds::Report, vec![0, 1, 2, 3, 4, 5]),
        ] {
            let (tx, rx) = mpsc::channel(16);
            for i in 0..6usize {
                tx.send((i, create(&format!("/d{i}/f")))).await.unwrap();
            }
            drop(tx);
            let mut prefixes = Vec::new();
            let ran = Arc::new(Mutex::new(Vec::new()));
            let mut rx = rx;
            let (end, unstarted) = run(
                &mut rx,
                1,
                holds,
                |i: usize, _| {
                    let ran = ran.clone();
                    async move {
                        ran.lock().unwrap().push(i);
                        Some(if i == 2 || i == 4 {
                            Disposition::Held
                        } else {
                            Disposition::Done
                        })
                    }
                },
                |i| prefixes.push(*i),
            )
            .await;
            assert_eq!(end, LaneEnd::Closed);
            assert!(unstarted.is_empty());
            assert_eq!(
                *ran.lock().unwrap(),
                (0..6).collect::<Vec<_>>(),
                "{holds:?}"
            );
            // One event at a time: each finish is reported on its own.
            assert_eq!(prefixes, want, "{holds:?}");
        }
    }
}
