//! Offset-file mode, upstream's: partitions are assigned directly (no consumer group),
//! each resumes after the offset recorded in the offset file or at the oldest retained
//! offset, and each is processed in order by its own worker. Progress is stored only for
//! events that finished (replicated, skipped or parked) together with every earlier event
//! of their partition. A broker that is down or restarts is waited for, never fatal.

use super::client::{KafkaConfigError, KafkaLogs, client_config};
use super::offsets::OffsetBook;
use super::watermarks::{Watermarks, fetch_watermarks, news, wait_for_partitions, watermark_loop};
use super::worker::{
    IDLE_AFTER, IDLE_CHECK, LANE_DEPTH, Problems, RESUME_GRACE, event_of, resume_fetching, worker,
};
use crate::config::settings::KafkaSettings;
use crate::event::RawEvent;
use crate::pipeline::Pipeline;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The consumer, with librdkafka's logs routed through [`KafkaLogs`].
type Kafka = StreamConsumer<KafkaLogs>;

struct Lane {
    tx: mpsc::Sender<(i64, RawEvent)>,
}

/// Consume until `stop` fires; in-flight events get until `hard_stop`. Saves the
/// offset file on the interval and before returning.
pub(super) async fn run(
    cfg: &KafkaSettings,
    pipeline: Arc<Pipeline>,
    stop: CancellationToken,
    hard_stop: CancellationToken,
) -> Result<(), KafkaConfigError> {
    let consumer: Kafka = client_config(cfg).create_with_context(KafkaLogs::default())?;
    let consumer = Arc::new(consumer);
    let (book, warning) = OffsetBook::load(&cfg.offset_file, &cfg.topic);
    if let Some(w) = warning {
        tracing::warn!("{w}");
    }
    let book = Arc::new(book);

    let Some(partitions) = wait_for_partitions(&consumer, &cfg.topic, &stop).await else {
        return Ok(());
    };
    if check_offsets(&consumer, cfg, &partitions, &book).await == crate::gaps::Then::Stop {
        stop.cancelled().await;
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        let offset = book
            .resume_at(p)
            .map(Offset::Offset)
            .unwrap_or(Offset::Beginning);
        tpl.add_partition_offset(&cfg.topic, p, offset)
            .expect("fresh partition list");
        tracing::info!(topic = %cfg.topic, partition = p, start = ?offset, "consuming partition");
    }
    if let Err(e) = consumer.assign(&tpl) {
        tracing::error!(error = %e, "assigning partitions failed");
    }
    tracing::info!(hosts = ?cfg.hosts, topic = %cfg.topic, "connected to kafka");

    let mut lanes = HashMap::new();
    let mut workers = Vec::new();
    for &p in &partitions {
        let (tx, rx) = mpsc::channel(LANE_DEPTH);
        lanes.insert(p, Lane { tx });
        workers.push(tokio::spawn(worker(
            p,
            rx,
            pipeline.clone(),
            book.clone(),
            stop.clone(),
            hard_stop.clone(),
        )));
    }

    let saver = tokio::spawn(save_loop(
        book.clone(),
        cfg.offset_save_interval,
        stop.clone(),
    ));
    let marks = Arc::new(Watermarks::default());
    {
        let (marks, book) = (marks.clone(), book.clone());
        crate::metrics::get().set_lag_source(&cfg.topic, Box::new(move || marks.lag(&book)));
    }
    let lag = {
        let ps = partitions.clone();
        tokio::spawn(watermark_loop(
            Arc::downgrade(&consumer),
            cfg.topic.clone(),
            marks.clone(),
            stop.clone(),
            false,
            move || ps.clone(),
            |_| async {},
        ))
    };

    // librdkafka reconnects on its own; the errors it reports are logged once per kind
    // until a message arrives again (then once more, as a recovery), and consumption
    // simply continues.
    let mut problems = Problems::default();
    // The next offset to consume per partition, as far as this loop has seen.
    let mut next: HashMap<i32, i64> = partitions
        .iter()
        .filter_map(|&p| book.resume_at(p).map(|o| (p, o)))
        .collect();
    // How long without a message counts as idle: short normally, longer right after a
    // resume, because librdkafka may take more than IDLE_AFTER to deliver the first
    // fetch after a resume, and pausing again before it does would purge it (a livelock
    // that delayed new events by minutes).
    let mut idle_after = IDLE_AFTER;
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => break,
            m = consumer.recv() => m,
            // Idle: fetching pauses until a partition's high watermark moves. Brokers that
            // answer an empty fetch at once instead of waiting fetch.wait.max.ms (noida-db
            // here) otherwise keep the client's fetch loop spinning; upstream burns most of
            // a core that way.
            _ = tokio::time::sleep(idle_after) => {
                wait_while_idle(&consumer, &tpl, &cfg.topic, &partitions, &next, &marks, &stop).await;
                idle_after = RESUME_GRACE;
                let answered = crate::metrics::get().is_up(crate::metrics::Component::Input);
                if answered == Some(true) {
                    problems.working();
                }
                continue;
            }
        };
        if let Ok(m) = &msg {
            next.insert(m.partition(), m.offset() + 1);
            marks.seen(m.partition(), m.offset());
            idle_after = IDLE_AFTER;
            if problems.working() {
                crate::metrics::get().set_up(crate::metrics::Component::Input, true);
            }
        }
        match msg {
            Ok(m) => {
                let Some(lane) = lanes.get(&m.partition()) else {
                    continue;
                };
                let event = event_of(&m);
                let offset = m.offset();
                drop(m);
                tokio::select! {
                    _ = stop.cancelled() => break,
                    r = lane.tx.send((offset, event)) => if r.is_err() { break },
                }
            }
            Err(e) => problems.problem(&e),
        }
    }
    drop(lanes);
    for w in workers {
        let _ = w.await;
    }
    let _ = saver.await;
    // Its watermark requests may wait seconds on a broker that is away; shutdown does not.
    lag.abort();
    match book.save_if_dirty() {
        Ok(_) => {
            tracing::info!(offsets = ?book.snapshot(), file = %cfg.offset_file.display(), "offsets saved")
        }
        Err(e) => {
            tracing::error!(error = %e, file = %cfg.offset_file.display(), "saving offsets failed")
        }
    }
    Ok(())
}

/// Offsets from the offset file that the topic cannot serve are gaps: past the end of a
/// partition (the topic was re-created, or the broker lost its log) or before its oldest
/// message (retention deleted what was never replicated). Each is reported, and the
/// partition starts again from its oldest message; without this, librdkafka would
/// silently reset the fetch position while the idle check and the offset file kept the
/// stale offset, and nothing would ever be replicated again.
async fn check_offsets(
    consumer: &Arc<Kafka>,
    cfg: &KafkaSettings,
    partitions: &[i32],
    book: &OffsetBook,
) -> crate::gaps::Then {
    let mut then = crate::gaps::Then::GoOn;
    for (p, marks) in fetch_watermarks(consumer, &cfg.topic, partitions).await {
        let Some(at) = book.resume_at(p) else {
            continue;
        };
        let (low, high) = match marks {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(partition = p, error = %e, "watermarks unknown; the offset is not checked");
                continue;
            }
        };
        let (reason, detail) = if at > high {
            (
                crate::gaps::Reason::OffsetAheadOfTopic,
                format!(
                    "offset file {} resumes partition {p} of topic {} at {at}, past its end ({high}): the topic was re-created or the broker lost its log; starting from its oldest message",
                    cfg.offset_file.display(),
                    cfg.topic
                ),
            )
        } else if at < low {
            (
                crate::gaps::Reason::OffsetBeforeOldest,
                format!(
                    "offset file {} resumes partition {p} of topic {} at {at}, but its oldest message is {low}: retention deleted {} messages that were never replicated",
                    cfg.offset_file.display(),
                    cfg.topic,
                    low - at
                ),
            )
        } else {
            continue;
        };
        book.forget(p);
        if crate::gaps::report(reason, &detail) == crate::gaps::Then::Stop {
            then = crate::gaps::Then::Stop;
        }
    }
    then
}

/// Pause fetching until some partition has a message past `next` (or its low watermark
/// where nothing was consumed yet), checking the watermarks every `IDLE_CHECK`.
async fn wait_while_idle(
    consumer: &Arc<Kafka>,
    tpl: &TopicPartitionList,
    topic: &str,
    partitions: &[i32],
    next: &HashMap<i32, i64>,
    watermarks: &Watermarks,
    stop: &CancellationToken,
) {
    if consumer.pause(tpl).is_err() {
        return;
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(IDLE_CHECK) => {}
        }
        let fetched = fetch_watermarks(consumer, topic, partitions).await;
        // The broker answers: the input is up, even on a topic too quiet for a message
        // to say so.
        if watermarks.record(&fetched, |_| true) {
            crate::metrics::get().set_up(crate::metrics::Component::Input, true);
        }
        if news(&fetched, |p, low| {
            Some(next.get(&p).copied().unwrap_or(low))
        }) {
            break;
        }
    }
    resume_fetching(&**consumer, tpl);
}

async fn save_loop(book: Arc<OffsetBook>, interval: Duration, stop: CancellationToken) {
    let mut retry = crate::retry::Retry::default();
    let mut tick = tokio::time::interval(interval.max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Said once when saving starts failing and once when it works again.
        match book.save_if_dirty() {
            Ok(_) => retry.succeeded(),
            Err(e) => {
                retry.failed("saving offsets failed", &e);
            }
        }
    }
}
