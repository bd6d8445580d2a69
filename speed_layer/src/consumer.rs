//! The speed layer's consumer loop.
//!
//! Offsets are committed only after the segment's seal, its final rows and its dead letters are durable, so
//! the committed offset is always the start of the open segment; on (re)assignment the open segment is
//! replayed from there, and a recorded seal for that start fixes its end (DESIGN.md §4).
//!
//! Sealing `[start, end)`: record the seal (first writer wins); if it is ours, write every cell of the
//! segment as final rows at `upto_offset = end` in one store transaction that also deletes rows of the
//! segment written past `end` (by an earlier run with larger limits, or a zombie before the seal existed),
//! then the dead letters of exactly that range, then commit `end`. Once a seal is recorded the store drops
//! any write of the segment past its end, so a zombie cannot change the sealed rows afterwards. A longer
//! recorded seal extends the segment; a shorter one (another member sealed it) rewinds the partition to
//! the segment start and replays up to the recorded end, deleting nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::config::Config;
use common::dead_letter;
use common::kafka::{subscribe, AssignmentContext};
use common::schema::Decoder;
use common::store::{Seal, SpeedRow, ViewStore};
use common::view::ViewSet;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::metrics as m;
use crate::segment::{Applied, Limits, Segment};
use crate::{Error, Result};

type Kafka = StreamConsumer<AssignmentContext>;

/// Runs the speed layer until `shutdown` is cancelled.
///
/// On shutdown the dirty rows of open segments are flushed (safe under set semantics) but nothing is sealed
/// or committed. Errors: the Kafka client cannot be created or subscribed; a store write keeps failing
/// until shutdown ([`Error::Cancelled`]).
pub async fn run(config: Config, store: Arc<dyn ViewStore>, shutdown: CancellationToken) -> Result<()> {
    m::describe();
    let consumer = subscribe(&config.kafka, &config.kafka.speed_group).map_err(Error::kafka("subscribe"))?;
    info!(topic = %config.kafka.topic, group = %config.kafka.speed_group, "speed layer started");

    let mut tick = tokio::time::interval(config.speed.flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut speed = SpeedLayer {
        limits: Limits { max_records: config.speed.segment_max_records, max_age: config.speed.segment_max_age },
        decoder: Decoder::new(&config),
        views: ViewSet::new(&config),
        partitions: HashMap::new(),
        consumer: consumer.clone(),
        store,
        shutdown: shutdown.clone(),
        config,
    };
    loop {
        let started = Instant::now();
        let handled = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => speed.on_tick().await,
            received = consumer.recv() => match received {
                Ok(message) => speed.on_record(message.detach()).await,
                Err(e) => {
                    warn!(error = %e, "kafka consumer error");
                    Ok(())
                }
            },
        };
        match handled {
            Ok(()) => speed.after_handling(started.elapsed()),
            Err(Error::Cancelled) => {
                // the store or Kafka is unreachable: a final flush would wait on it too; the open segments
                // are replayed from the committed offsets on restart (DESIGN.md §4)
                info!("speed layer stopped while retrying; nothing more written");
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
    speed.flush_open_segments().await;
    info!("speed layer stopped");
    Ok(())
}

#[derive(Debug)]
struct PartitionState {
    /// Assignment epoch this state was built under.
    epoch: u64,
    segment: Segment,
    last_record_at: Instant,
}

/// What [`SpeedLayer::on_gap`] decided about the record after a jump in offsets.
#[derive(Debug, PartialEq, Eq)]
enum Gap {
    /// Apply the record to the (possibly new) open segment.
    Continue,
    /// The record belongs to a recorded seal that was skipped: drop it (the consumer was sought past it).
    InSkippedSeal,
}

enum Sealed {
    /// Sealed and committed; the next segment is open.
    Done,
    /// A longer seal was already recorded: the segment goes on to that end.
    Extended,
    /// A shorter seal was already recorded: rows past it were deleted and the partition rewound to the start.
    Rewound,
}

struct SpeedLayer {
    config: Config,
    limits: Limits,
    decoder: Decoder,
    views: ViewSet,
    partitions: HashMap<i32, PartitionState>,
    consumer: Arc<Kafka>,
    store: Arc<dyn ViewStore>,
    shutdown: CancellationToken,
}

impl SpeedLayer {
    fn topic(&self) -> &str {
        &self.config.kafka.topic
    }

    /// After a handler that held the consumer for `took`: if that was `speed.segment_max_idle` or more (a
    /// store or Kafka call retried through an outage), no partition counts as idle for the time no record
    /// could be read; otherwise every open segment would seal at its position on the next tick with records
    /// waiting, and DESIGN.md §4 seals an idle segment only when the consumer is at the log end.
    fn after_handling(&mut self, took: Duration) {
        if took >= self.config.speed.segment_max_idle {
            let now = Instant::now();
            self.partitions.values_mut().for_each(|state| state.last_record_at = now);
        }
    }

    async fn on_record(&mut self, message: OwnedMessage) -> Result<()> {
        let partition = message.partition();
        let offset = message.offset();
        let timestamp_ms = message.timestamp().to_millis();
        let Some(epoch) = self.consumer.context().epoch(partition) else {
            return Ok(()); // not (or no longer) ours
        };
        let mut state = match self.partitions.remove(&partition) {
            Some(state) if state.epoch == epoch => state,
            _ => self.open_partition(partition, epoch, offset).await?,
        };
        let result = self.process(&mut state, offset, timestamp_ms, message.payload().unwrap_or_default()).await;
        self.partitions.insert(partition, state);
        result
    }

    async fn process(
        &self,
        state: &mut PartitionState,
        offset: i64,
        timestamp_ms: Option<i64>,
        payload: &[u8],
    ) -> Result<()> {
        if offset < state.segment.position {
            return Ok(()); // already applied (redelivery after a seek)
        }
        if offset > state.segment.position {
            // offsets without records (transaction markers, compaction), or deleted by retention
            if self.on_gap(state, offset).await? == Gap::InSkippedSeal {
                return Ok(());
            }
        }
        while state.segment.must_seal_before(offset, timestamp_ms, self.limits) {
            let end = state.segment.seal_end_before(offset);
            if let Sealed::Rewound = self.seal(state, end).await? {
                return Ok(());
            }
        }
        state.last_record_at = Instant::now();
        metrics::counter!(m::RECORDS).increment(1);
        match state.segment.apply(self.topic(), offset, timestamp_ms, payload, &self.decoder, &self.views) {
            Applied::Counted => {}
            Applied::CountedWithoutKey => {
                metrics::counter!(m::RECORDS_WITHOUT_KEY, "consumer" => "speed").increment(1);
            }
            Applied::Duplicate => metrics::counter!(m::DUPLICATES).increment(1),
            Applied::DeadLetter(reason) => {
                metrics::counter!(m::DEAD_LETTERS, "consumer" => "speed").increment(1);
                debug!(partition = state.segment.partition, offset, %reason, "dead letter");
            }
        }
        if state.segment.is_full(self.limits) {
            let end = state.segment.position;
            self.seal(state, end).await?;
        }
        Ok(())
    }

    /// Opens the segment at the committed offset, which is always a seal end (DESIGN.md §4).
    ///
    /// A committed offset below the published cutoff (a lost commit) resumes at the cutoff instead: those
    /// records are in the batch view, and their seals may have been pruned. Without a committed offset (a
    /// new group, a renamed or expired one, or a member that crashed before its first commit) it resumes at
    /// the start of the last seal of the recorded chain from the cutoff ([`Self::chain_resume`]), so a
    /// segment never starts off the chain and a sealed segment is never left unfinalized (unless retention
    /// deleted records of it: [`Self::on_gap`]); with no seal at all, at the first record.
    async fn open_partition(&self, partition: i32, epoch: u64, first_offset: i64) -> Result<PartitionState> {
        let committed = self.committed_offset(partition).await?;
        let cutoff = self.published_cutoff(partition).await?;
        let start = match committed {
            Some(c) => c.max(cutoff.unwrap_or(i64::MIN)),
            None => self.chain_resume(partition, cutoff).await?.unwrap_or(first_offset),
        };
        if start != committed.unwrap_or(first_offset) {
            info!(
                partition,
                ?committed,
                ?cutoff,
                start,
                "resuming at the published cutoff or on the recorded seal chain"
            );
            self.seek(partition, start).await?;
        }
        let sealed_end = self.retry(|| self.store.seal_at(self.topic(), partition, start)).await?.map(|s| s.end);
        info!(partition, start, ?sealed_end, "replaying open segment from the committed offset");
        Ok(PartitionState {
            epoch,
            segment: Segment::open(partition, start, sealed_end),
            last_record_at: Instant::now(),
        })
    }

    /// The published cutoff of `partition`, if the batch has one.
    async fn published_cutoff(&self, partition: i32) -> Result<Option<i64>> {
        Ok(self.retry(|| self.store.current_manifest()).await?.and_then(|m| m.cutoffs.get(&partition).copied()))
    }

    /// Where a member without a committed offset resumes on the recorded seal chain of `partition` from
    /// `cutoff` (from its first seal without a cutoff), per [`chain_tail`]: the *start* of the chain's last
    /// seal, so that sealed segment is replayed and finalized again (idempotent); its recorder may have
    /// crashed between recording the seal and finalizing it, and the commit that would tell follows the
    /// finalize (every earlier seal was finalized before the next one was recorded). If retention deleted
    /// records of it, the replay skips it ([`Self::on_gap`]). `cutoff` itself when no seal starts there;
    /// `None` without either.
    async fn chain_resume(&self, partition: i32, cutoff: Option<i64>) -> Result<Option<i64>> {
        let from = std::collections::BTreeMap::from([(partition, cutoff.unwrap_or(i64::MIN))]);
        let seals: Vec<Seal> = self
            .retry(|| self.store.seals_from(self.topic(), &from))
            .await?
            .into_iter()
            .filter(|s| s.partition == partition)
            .collect();
        Ok(chain_tail(&seals, cutoff).map(|(last, end)| last.map_or(end, |s| s.start)))
    }

    /// The record at `got` came after the segment's position: the low watermark (log start) tells whether
    /// the offsets in between held no records (transaction markers, aborted or compacted records) or were
    /// deleted by retention before the speed layer read them (librdkafka resets an out-of-range position to
    /// the log start and only logs it). One watermark request, paid only at such jumps, retried until it
    /// answers: the decision below must not guess.
    ///
    /// A replay of a recorded seal that finds records of it deleted cannot finalize it (its counts would be
    /// partial, at the recorder's `upto_offset`): the seal is skipped ([`Self::skip_seal`]), and so is every
    /// following recorded seal the gap reaches. Deleted offsets no seal covers are reported lost (the
    /// `records_lost_to_retention_total` metric and an error line).
    ///
    /// `low > position` is taken as retention even when `got` was fetched before the log start passed it
    /// (a marker gap on a transactional topic at that moment): skipping a seal whose records were all
    /// fetched leaves its recorder's rows, where finalizing a partial replay would replace them.
    async fn on_gap(&self, state: &mut PartitionState, got: i64) -> Result<Gap> {
        let partition = state.segment.partition;
        let low = self.log_start(partition).await?;
        if self.consumer.context().epoch(partition) != Some(state.epoch) {
            return Ok(Gap::InSkippedSeal); // revoked meanwhile: the next owner decides, this member writes nothing
        }
        while low > state.segment.position && got > state.segment.position {
            let position = state.segment.position;
            let Some(end) = state.segment.sealed_end.filter(|&end| end > position) else { break };
            self.skip_seal(state, end, low).await?;
        }
        let expected = state.segment.position;
        if got < expected {
            self.seek_if_ours(state, expected).await?;
            return Ok(Gap::InSkippedSeal);
        }
        if got > expected && low > expected {
            let to = low.min(got);
            error!(
                partition,
                from = expected,
                to,
                "records were deleted by retention before the speed layer read them; they are missing from the speed view"
            );
            metrics::counter!(m::RECORDS_LOST, "consumer" => "speed").increment((to - expected).max(0) as u64);
        } else if got > expected {
            debug!(partition, from = expected, to = got, "offsets without records (transaction markers or compaction)");
        }
        Ok(Gap::Continue)
    }

    /// Skips the recorded seal `[segment.start, end)`, some of whose records retention deleted (the log
    /// starts at `log_start`): its rows past `end` are deleted ([`ViewStore::trim_segment`]; written by a
    /// run with larger limits before the seal existed) and the rest stay as its recorder left them, final
    /// or, if it crashed before finalizing, its last flush (the batch view takes the range over once a
    /// cutoff passes it). A deleted row also held records of the seal itself (its recorder's flush was
    /// replaced by the longer run's): those are reported lost. The segment's dead letters are left to the
    /// archiver's. The next segment opens at `end`. Nothing is committed here.
    async fn skip_seal(&self, state: &mut PartitionState, end: i64, log_start: i64) -> Result<()> {
        let (topic, partition, start) = (self.topic(), state.segment.partition, state.segment.start);
        warn!(
            partition,
            seal_start = start,
            seal_end = end,
            log_start,
            "retention deleted records of a recorded seal before its replay: skipping it, not finalizing it; its rows \
             stay as its recorder left them (complete if it finalized them, else its last flush) until the batch covers it"
        );
        metrics::counter!(m::SEALS_SKIPPED).increment(1);
        let seal = Seal { partition, start, end };
        let trimmed = self.retry(|| self.store.trim_segment(topic, seal)).await?;
        if trimmed > 0 {
            error!(
                partition,
                seal_start = start,
                seal_end = end,
                rows = trimmed,
                "rows of the skipped seal counted records past its end and were deleted; their records within the seal \
                 are missing from the speed view until the batch covers them"
            );
            metrics::counter!(m::ROWS_TRIMMED).increment(trimmed);
        }
        let next_end = self.retry(|| self.store.seal_at(topic, partition, end)).await?.map(|s| s.end);
        state.segment = Segment::open(partition, end, next_end);
        Ok(())
    }

    /// The log start offset (low watermark) of `partition`, retried with backoff until it answers or
    /// shutdown ([`Error::Cancelled`]).
    async fn log_start(&self, partition: i32) -> Result<i64> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let timeout = Duration::from_secs(5);
            match common::kafka::low_watermark(&self.consumer, self.topic(), partition, timeout).await {
                Ok(low) => return Ok(low),
                Err(e) => {
                    warn!(partition, error = %e, ?backoff, "cannot read the log start; retrying");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return Err(Error::Cancelled),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Seeks the partition of `state` to `offset` while this member still owns it under the state's epoch;
    /// a seek that fails because the partition was revoked meanwhile is no error (the next owner resumes
    /// on its own).
    async fn seek_if_ours(&self, state: &PartitionState, offset: i64) -> Result<()> {
        let partition = state.segment.partition;
        let ours = || self.consumer.context().epoch(partition) == Some(state.epoch);
        if !ours() {
            return Ok(());
        }
        match self.seek(partition, offset).await {
            Err(e) if ours() => Err(e),
            Err(e) => {
                debug!(partition, offset, error = %e, "seek after the partition was revoked");
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    async fn seek(&self, partition: i32, offset: i64) -> Result<()> {
        common::kafka::seek(&self.consumer, self.topic(), partition, offset).await.map_err(Error::kafka("seek"))
    }

    /// The group's committed offset of `partition`, asked of the group coordinator until it answers (a
    /// broker restart or a coordinator move is a wait, not a reason to exit; [`Self::with_backoff`]).
    async fn committed_offset(&self, partition: i32) -> Result<Option<i64>> {
        let ask = || {
            let (consumer, topic) = (self.consumer.clone(), self.topic().to_owned());
            async move {
                tokio::task::spawn_blocking(move || {
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition(&topic, partition);
                    consumer.committed_offsets(tpl, Duration::from_secs(10))
                })
                .await
                .expect("committed_offsets task does not panic")
            }
        };
        let tpl = self
            .with_backoff(
                ask,
                transient,
                |e, backoff| warn!(partition, error = %e, ?backoff, "reading the committed offset failed; retrying"),
            )
            .await
            .map_err(|e| e.map_or(Error::Cancelled, |source| Error::Kafka { context: "committed offsets", source }))?;
        Ok(match tpl.find_partition(self.topic(), partition).map(|e| e.offset()) {
            Some(Offset::Offset(n)) => Some(n),
            _ => None,
        })
    }

    /// Seals `[start, end)`: record the seal (first writer wins); if it is ours, write the segment's final
    /// rows (every cell at `upto_offset = end`, deleting rows written past `end`), its dead letters, then
    /// commit `end` (module docs).
    async fn seal(&self, state: &mut PartitionState, end: i64) -> Result<Sealed> {
        let seg = &mut state.segment;
        let (partition, start) = (seg.partition, seg.start);
        let topic = self.topic();
        let Some(recorded) = self.retry(|| self.store.record_seal(topic, Seal { partition, start, end })).await? else {
            // below the published cutoff (this member lagged behind two batch runs, or woke as a zombie):
            // the batch view holds these records; resume at the cutoff
            let cutoff = self.published_cutoff(partition).await?.unwrap_or(end).max(start);
            warn!(partition, start, cutoff, "the segment starts below the published cutoff; resuming at the cutoff");
            let sealed_end = self.retry(|| self.store.seal_at(topic, partition, cutoff)).await?.map(|s| s.end);
            state.segment = Segment::open(partition, cutoff, sealed_end);
            self.seek_if_ours(state, cutoff).await?;
            return Ok(Sealed::Rewound);
        };
        if recorded.end == end {
            let rows = seg.all_rows(&self.views, end);
            let started = Instant::now();
            self.retry(|| self.store.finalize_segment(topic, recorded, &rows)).await?;
            metrics::histogram!(m::FLUSH_SECONDS).record(started.elapsed().as_secs_f64());
            metrics::counter!(m::ROWS_WRITTEN).increment(rows.len() as u64);
            if !seg.dead_letters().is_empty() {
                let root = &self.config.archive.root;
                let letters = seg.dead_letters();
                self.retry(|| async { dead_letter::write(root, "speed", start, end, letters).map(|_| ()) }).await?;
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, partition, Offset::Offset(end)).map_err(Error::kafka("commit"))?;
            if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
                warn!(partition, end, error = %e, "offset commit failed; the sealed segment will be replayed and its seal adopted");
            }
            metrics::counter!(m::SEGMENTS_SEALED).increment(1);
            debug!(partition, start, end, "segment sealed");
            let next_end = self.retry(|| self.store.seal_at(topic, partition, end)).await?.map(|s| s.end);
            state.segment = Segment::open(partition, end, next_end);
            return Ok(Sealed::Done);
        }
        metrics::counter!(m::SEAL_CONFLICTS).increment(1);
        if recorded.end > end {
            info!(partition, start, end, recorded = recorded.end, "a longer seal is recorded; extending the segment");
            seg.sealed_end = Some(recorded.end);
            return Ok(Sealed::Extended);
        }
        // Another member sealed [start, recorded.end) and wrote its final rows; this member's writes past
        // that end were dropped by the store, so there is nothing to delete: replay up to the recorded end.
        warn!(partition, start, end, recorded = recorded.end, "a shorter seal is recorded; rewinding the segment");
        state.segment = Segment::open(partition, start, Some(recorded.end));
        if self.consumer.context().epoch(partition) == Some(state.epoch) {
            self.seek(partition, start).await?;
        }
        Ok(Sealed::Rewound)
    }

    /// Flushes dirty rows of every open segment and seals idle ones at the log end.
    async fn on_tick(&mut self) -> Result<()> {
        let partitions: Vec<i32> = self.partitions.keys().copied().collect();
        for partition in partitions {
            let mut state = self.partitions.remove(&partition).expect("listed above");
            if self.consumer.context().epoch(partition) != Some(state.epoch) {
                continue; // revoked: write and seal nothing more
            }
            let result = self.tick_partition(&mut state).await;
            self.partitions.insert(partition, state);
            result?;
        }
        Ok(())
    }

    /// Flushes the partition's dirty rows; seals an idle segment.
    ///
    /// Idle: no record for `speed.segment_max_idle`. The segment seals at its position even when the high
    /// watermark is past it: offsets there that never arrive hold no records for this consumer (transaction
    /// markers, aborted or compacted records), and if records do arrive later they simply open the next
    /// segment. Waiting for `high == position` would never seal before a trailing transaction marker.
    async fn tick_partition(&self, state: &mut PartitionState) -> Result<()> {
        let seg = &mut state.segment;
        if seg.has_dirty() {
            let rows = seg.take_dirty_rows(&self.views, seg.position);
            if let Err(e) = self.write_rows(&rows).await {
                warn!(partition = seg.partition, error = %e, "flush failed; retrying at the next tick");
                seg.mark_dirty_again(&self.views, &rows);
            }
        }
        let idle = seg.sealed_end.is_none()
            && seg.records > 0
            && state.last_record_at.elapsed() >= self.config.speed.segment_max_idle;
        if idle {
            let end = seg.position;
            debug!(partition = seg.partition, end, "idle: sealing at the position");
            self.seal(state, end).await?;
        }
        Ok(())
    }

    async fn flush_open_segments(&mut self) {
        for (&partition, state) in self.partitions.iter_mut() {
            if self.consumer.context().epoch(partition) != Some(state.epoch) {
                continue; // revoked: write nothing more
            }
            let rows = state.segment.take_dirty_rows(&self.views, state.segment.position);
            if let Err(e) = self.store.upsert_speed_rows(&self.config.kafka.topic, &rows).await {
                warn!(error = %e, "final flush failed; the open segment will be replayed on restart");
            }
        }
    }

    async fn write_rows(&self, rows: &[SpeedRow]) -> common::Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        self.store.upsert_speed_rows(self.topic(), rows).await?;
        metrics::histogram!(m::FLUSH_SECONDS).record(started.elapsed().as_secs_f64());
        metrics::counter!(m::ROWS_WRITTEN).increment(rows.len() as u64);
        Ok(())
    }

    /// Retries a store operation (a read or an idempotent write) with exponential backoff (100 ms doubling
    /// to 5 s) until it succeeds, fails with a non-retryable error, or shutdown is requested.
    async fn retry<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = common::Result<T>>,
    {
        self.with_backoff(op, common::Error::is_retryable, |e, backoff| {
            metrics::counter!(m::STORE_RETRIES).increment(1);
            warn!(error = %e, ?backoff, "store call failed; retrying");
        })
        .await
        .map_err(|e| e.map_or(Error::Cancelled, Error::from))
    }

    /// Repeats `op` while its error is `transient`, after `on_retry` and a backoff of 100 ms doubling to 5 s.
    /// Errors: `Some(e)` for an error that is not transient, `None` when shutdown is requested meanwhile.
    async fn with_backoff<T, E, F, Fut>(
        &self,
        mut op: F,
        transient: impl Fn(&E) -> bool,
        mut on_retry: impl FnMut(&E, Duration),
    ) -> std::result::Result<T, Option<E>>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, E>>,
    {
        let mut backoff = Duration::from_millis(100);
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if transient(&e) => {
                    on_retry(&e, backoff);
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return Err(None),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(Some(e)),
            }
        }
    }
}

/// Whether a Kafka error can pass by itself (a broker restarting, the group coordinator moving or loading,
/// a timeout), so the call is worth repeating; authorization and argument errors are not.
fn transient(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::BrokerTransportFailure
                | C::AllBrokersDown
                | C::OperationTimedOut
                | C::TimedOutQueue
                | C::RequestTimedOut
                | C::BrokerNotAvailable
                | C::NetworkException
                | C::CoordinatorLoadInProgress
                | C::CoordinatorNotAvailable
                | C::NotCoordinator
        )
    )
}

/// The recorded seal chain of one partition from `cutoff` (DESIGN.md §4): `seals` are that partition's
/// seals from `cutoff` in start order (foreign seals off the chain are skipped); the chain starts at `cutoff`,
/// or at the first seal without a cutoff, and follows `end -> start` links. Returns the chain's last seal
/// (`None` when no seal starts at `cutoff`) and its end, where the next segment starts; `None` without a
/// cutoff or a seal.
fn chain_tail(seals: &[Seal], cutoff: Option<i64>) -> Option<(Option<Seal>, i64)> {
    let mut at = cutoff.or_else(|| seals.first().map(|s| s.start))?;
    let mut last = None;
    for s in seals {
        if s.start == at {
            last = Some(*s);
            at = s.end;
        }
    }
    Some((last, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal(start: i64, end: i64) -> Seal {
        Seal { partition: 0, start, end }
    }

    #[test]
    fn the_chain_is_followed_from_the_cutoff_and_skips_foreign_seals() {
        let seals = [seal(100, 200), seal(150, 180), seal(200, 350), seal(400, 500)];
        assert_eq!(chain_tail(&seals, Some(100)), Some((Some(seal(200, 350)), 350)));
        assert_eq!(chain_tail(&seals, None), Some((Some(seal(200, 350)), 350)));
        assert_eq!(chain_tail(&seals[3..], Some(350)), Some((None, 350)), "no seal starts at the cutoff");
        assert_eq!(chain_tail(&[], Some(42)), Some((None, 42)));
        assert_eq!(chain_tail(&[], None), None);
    }
}
