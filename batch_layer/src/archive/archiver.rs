//! The archiver: its own consumer group, writing every record to the Parquet master dataset.
//!
//! Per partition it buffers records and closes a file once it holds `archive.max_file_records` records or
//! its first record has waited `archive.max_file_age`. A file is written to a temporary name, fsynced,
//! renamed and the directory fsynced; only then is the Kafka offset committed. Records that fail to decode
//! go to the dead-letter file of the same offset range.
//!
//! Where it reads is decided by its files, not by the committed offset (DESIGN.md §4), so a crash between
//! a rename and its commit archives nothing twice, and a lost range is read again:
//! - on assignment, and after each file at the end of the archive, it plans with
//!   [`files::resume_plan`]: the first range missing between its files (deleted files, a wiped archive, a
//!   log start before the first file) is read again from Kafka, then it returns to the end of the archive;
//!   a missing range retention has already deleted from the log is reported (error log,
//!   `records_lost_to_retention_total`) and left as a gap, which stops the batch cutoff there;
//! - whenever a record arrives past the position (after a seek, or mid-stream), the log start tells what
//!   the skipped offsets were: if the log still starts at or before them they held no records for this
//!   consumer (transaction markers, aborted or compacted records) and the file covers them, so the files
//!   keep tiling the log; otherwise retention deleted them (librdkafka resets an out-of-range position to
//!   the log start and only logs it) and the file starts after the gap, which is reported. Reading the log
//!   start is one watermark request, paid only at such jumps (seeks, transaction markers, resets).

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::config::{Config, FieldType};
use common::dead_letter::{self, DeadLetter};
use common::kafka::{subscribe, AssignmentContext};
use common::schema::Decoder;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::files::{self, file_name, partition_dir, resume_plan};
use super::parquet_file::{self, ArchivedRecord};
use crate::metrics as m;
use crate::{Error, Result};

type Kafka = StreamConsumer<AssignmentContext>;

#[derive(Debug)]
struct OpenFile {
    epoch: u64,
    /// First offset the file covers (the previous file's `next`, or where the archiver sought).
    first: i64,
    /// Offset after the last record taken.
    next: i64,
    records: Vec<ArchivedRecord>,
    dead_letters: Vec<DeadLetter>,
    opened_at: Option<Instant>,
    /// While re-reading a missing range: its end (the first offset of the next file). The file closes
    /// there, and the archiver plans again.
    until: Option<i64>,
}

impl OpenFile {
    fn new(epoch: u64, first: i64, until: Option<i64>) -> Self {
        OpenFile { epoch, first, next: first, records: Vec::new(), dead_letters: Vec::new(), opened_at: None, until }
    }

    fn len(&self) -> usize {
        self.records.len() + self.dead_letters.len()
    }
}

/// Runs the archiver until `shutdown` is cancelled; on shutdown it closes its open files and commits.
///
/// Errors: the Kafka client cannot be created or subscribed; a file cannot be written.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    m::describe();
    let consumer = subscribe(&config.kafka, &config.kafka.archive_group).map_err(Error::kafka("subscribe"))?;
    info!(topic = %config.kafka.topic, group = %config.kafka.archive_group, root = %config.archive.root.display(), "archiver started");
    let decoder = Decoder::new(&config);
    let mut archiver = Archiver {
        fields: Arc::new(decoder.fields().to_vec()),
        decoder,
        open: HashMap::new(),
        lost: HashMap::new(),
        first_held: HashMap::new(),
        consumer: consumer.clone(),
        config,
    };
    let tick_every =
        (archiver.config.archive.max_file_age / 4).clamp(Duration::from_millis(20), Duration::from_secs(1));
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => archiver.close_aged().await?,
            received = consumer.recv() => match received {
                Ok(message) => {
                    let message = message.detach();
                    archiver.on_record(message).await?;
                }
                Err(e) => warn!(error = %e, "kafka consumer error"),
            },
        }
    }
    archiver.close_all().await?;
    info!("archiver stopped");
    Ok(())
}

struct Archiver {
    config: Config,
    decoder: Decoder,
    fields: Arc<Vec<(String, FieldType)>>,
    open: HashMap<i32, OpenFile>,
    /// Gaps between files that retention deleted from the log, per partition: never read again.
    lost: HashMap<i32, Vec<(i64, i64)>>,
    /// The lowest offset the partition's archive held (or was set to hold) at its last plan: a first file
    /// that starts above it later means files were deleted from the front.
    first_held: HashMap<i32, i64>,
    consumer: Arc<Kafka>,
}

impl Archiver {
    fn topic(&self) -> &str {
        &self.config.kafka.topic
    }

    async fn on_record(&mut self, message: OwnedMessage) -> Result<()> {
        let partition = message.partition();
        let offset = message.offset();
        let Some(epoch) = self.consumer.context().epoch(partition) else { return Ok(()) };
        let mut file = match self.open.remove(&partition) {
            Some(f) if f.epoch == epoch => f,
            _ => {
                // a new assignment: read from where the files say, not from the committed offset (the
                // record in hand predates that seek)
                let file = self.plan(partition, epoch, true).await?;
                self.open.insert(partition, file);
                return Ok(());
            }
        };
        if offset < file.next {
            self.open.insert(partition, file); // before the position (a redelivery): archived already
            return Ok(());
        }
        if offset > file.next {
            if let Some((lost_to, known)) = self.deleted_before(partition, file.next, offset).await {
                if known {
                    self.lost.entry(partition).or_default().push((file.next, lost_to));
                }
                // close what the file holds, and start after the gap so the archive shows it
                let (first, next) = (file.first, file.next);
                self.open.insert(partition, file);
                if next > first {
                    self.close(partition).await?;
                }
                file = self.open.remove(&partition).expect("inserted above");
                file.first = lost_to;
                file.next = lost_to;
            }
        }
        if let Some(until) = file.until.filter(|&until| offset >= until) {
            // the missing range is read up to the next file: close it there, then plan again
            file.next = file.next.max(until);
            self.open.insert(partition, file);
            self.close(partition).await?;
            let next = self.plan(partition, epoch, false).await?;
            self.open.insert(partition, next);
            return Ok(());
        }
        let timestamp_ms = message.timestamp().to_millis();
        let payload = message.payload().unwrap_or_default();
        match self.decoder.decode(payload) {
            Ok(event) => {
                if event.dedup_key.is_none() {
                    metrics::counter!(m::RECORDS_WITHOUT_KEY, "consumer" => "archive").increment(1);
                }
                file.records.push(ArchivedRecord { offset, timestamp_ms, event });
            }
            Err(e) => {
                metrics::counter!(m::DEAD_LETTERS, "consumer" => "archive").increment(1);
                file.dead_letters.push(DeadLetter::new(self.topic(), partition, offset, timestamp_ms, payload, e.0));
            }
        }
        file.next = offset + 1;
        file.opened_at.get_or_insert_with(Instant::now);
        let full = file.len() >= self.config.archive.max_file_records;
        let refill_done = file.until == Some(file.next);
        self.open.insert(partition, file);
        if refill_done {
            self.close(partition).await?;
            let next = self.plan(partition, epoch, false).await?;
            self.open.insert(partition, next);
        } else if full {
            self.close(partition).await?;
        }
        Ok(())
    }

    /// The record after `expected` came at `got`. `None` when the offsets in between held no records (the
    /// log still starts at or before `expected`); `Some((end, true))` when retention deleted
    /// `[expected, end)` before the archiver read it (reported); `Some((got, false))` when the log start
    /// cannot be read even after retries: the file leaves a gap rather than claim offsets it cannot vouch
    /// for, and the next plan reads that gap again (it holds no records, or the ones it does get archived).
    async fn deleted_before(&self, partition: i32, expected: i64, got: i64) -> Option<(i64, bool)> {
        let mut low = self.low_watermark(partition).await;
        for _ in 0..3 {
            if low.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            low = self.low_watermark(partition).await;
        }
        match low {
            Some(low) if low > expected => {
                let lost_to = low.min(got);
                error!(
                    partition,
                    from = expected,
                    to = lost_to,
                    "records were deleted by retention before the archiver read them; the archive has a gap there"
                );
                metrics::counter!(m::RECORDS_LOST, "consumer" => "archive").increment((lost_to - expected) as u64);
                Some((lost_to, true))
            }
            Some(_) => {
                debug!(
                    partition,
                    from = expected,
                    to = got,
                    "offsets without records (transaction markers or compaction)"
                );
                None
            }
            None => {
                warn!(
                    partition,
                    from = expected,
                    to = got,
                    "cannot read the log start to tell what the skipped offsets were; leaving a gap to read again"
                );
                Some((got, false))
            }
        }
    }

    async fn low_watermark(&self, partition: i32) -> Option<i64> {
        match common::kafka::low_watermark(&self.consumer, self.topic(), partition, Duration::from_secs(10)).await {
            Ok(low) => Some(low),
            Err(e) => {
                warn!(partition, error = %e, "cannot read the low watermark");
                None
            }
        }
    }

    async fn seek(&self, partition: i32, offset: i64) -> Result<()> {
        common::kafka::seek(&self.consumer, self.topic(), partition, offset).await.map_err(Error::kafka("seek"))
    }

    /// Decides where `partition` reads next from its files ([`files::resume_plan`]), seeks there and returns
    /// the open file. On `assignment` (or when the files have a gap) the log start is read too, to find
    /// ranges missing before the first file and ranges retention deleted; between files at the end of the
    /// archive only the directory is listed. Also clears leftovers a crash left (temporary files,
    /// dead-letter files whose Parquet twin was never renamed or was lost).
    async fn plan(&mut self, partition: i32, epoch: u64, assignment: bool) -> Result<OpenFile> {
        let root = self.config.archive.root.clone();
        files::remove_temp_files(&partition_dir(&root, self.topic(), partition));
        let listed = files::list_partition(&root, self.topic(), partition)?;
        let mut plan = resume_plan(&listed, i64::MIN);
        if assignment || plan.refill.is_some() {
            if let Some(low) = self.low_watermark(partition).await {
                plan = resume_plan(&listed, low);
            } else if listed.is_empty() {
                plan = resume_plan(&listed, 0);
            }
        }
        let known = self.lost.entry(partition).or_default();
        for &(from, to) in &plan.lost {
            if !known.contains(&(from, to)) {
                error!(partition, from, to, "archive files are missing and retention deleted these offsets from the log; the batch cannot count them");
                known.push((from, to));
            }
        }
        let dl_dir = dead_letter::partition_dir(&root, "archive", self.topic(), partition);
        files::remove_temp_files(&dl_dir);
        let twins: std::collections::HashSet<(i64, i64)> = listed.iter().map(|f| (f.first, f.next)).collect();
        if let Ok(entries) = fs::read_dir(&dl_dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let range = name.strip_suffix(".jsonl").and_then(|stem| {
                    let (a, b) = stem.split_once('-')?;
                    Some((a.parse::<i64>().ok()?, b.parse::<i64>().ok()?))
                });
                if let Some((first, next)) = range {
                    let orphan = !twins.contains(&(first, next));
                    let in_refill = plan.refill.is_some_and(|(from, to)| first < to && next > from);
                    if orphan && (first >= plan.frontier || in_refill) {
                        let _ = fs::remove_file(e.path());
                    }
                }
            }
        }
        let lowest = listed.first().map(|f| f.first).into_iter().chain(plan.refill.map(|(from, _)| from)).min();
        self.first_held.insert(partition, lowest.unwrap_or(plan.frontier));
        let file = match plan.refill {
            Some((from, to)) => {
                warn!(
                    partition,
                    from, to, "archive files are missing for these offsets; reading them again from Kafka"
                );
                metrics::counter!(m::ARCHIVE_REFILLS).increment(1);
                OpenFile::new(epoch, from, Some(to))
            }
            None => {
                info!(partition, resume = plan.frontier, "archiver resuming after its last file");
                OpenFile::new(epoch, plan.frontier, None)
            }
        };
        self.seek(partition, file.first).await?;
        Ok(file)
    }

    async fn close_aged(&mut self) -> Result<()> {
        let max_age = self.config.archive.max_file_age;
        let aged: Vec<i32> = self
            .open
            .iter()
            .filter(|(_, f)| f.opened_at.is_some_and(|t| t.elapsed() >= max_age))
            .map(|(p, _)| *p)
            .collect();
        for partition in aged {
            self.close(partition).await?;
        }
        Ok(())
    }

    async fn close_all(&mut self) -> Result<()> {
        let partitions: Vec<i32> = self.open.keys().copied().collect();
        for partition in partitions {
            if self.consumer.context().epoch(partition) == self.open.get(&partition).map(|f| f.epoch) {
                self.close(partition).await?;
            }
        }
        Ok(())
    }

    /// Writes the open file of `partition` (dead letters first, then Parquet). At the end of the archive it
    /// then commits its `next` and checks the directory for missing ranges to read again; while re-reading
    /// a missing range it commits nothing (the committed offset stays at the end of the archive).
    async fn close(&mut self, partition: i32) -> Result<()> {
        let Some(file) = self.open.get_mut(&partition) else { return Ok(()) };
        if file.first >= file.next {
            return Ok(());
        }
        if self.consumer.context().epoch(partition) != Some(file.epoch) {
            self.open.remove(&partition); // revoked: the new owner rewrites this range
            return Ok(());
        }
        let (first, next, refilling) = (file.first, file.next, file.until.is_some());
        let records = std::mem::take(&mut file.records);
        let letters = std::mem::take(&mut file.dead_letters);
        file.first = next;
        file.opened_at = None;
        let root = self.config.archive.root.clone();
        let path: PathBuf = partition_dir(&root, self.topic(), partition).join(file_name(first, next));
        let fields = self.fields.clone();
        let count = records.len();
        tokio::task::spawn_blocking(move || -> Result<()> {
            if !letters.is_empty() {
                dead_letter::write(&root, "archive", first, next, &letters)?;
            }
            parquet_file::write(&path, partition, &fields, &records)
        })
        .await
        .expect("archive writer task does not panic")?;
        metrics::counter!(m::ARCHIVED_RECORDS).increment(count as u64);
        metrics::counter!(m::ARCHIVE_FILES).increment(1);
        debug!(partition, first, next, records = count, refilling, "archive file written");
        if refilling {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(self.topic(), partition, Offset::Offset(next)).map_err(Error::kafka("commit"))?;
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            warn!(partition, next, error = %e, "offset commit failed; the archiver resumes from its files anyway");
        }
        // files deleted behind the end of the archive while it runs are read again now, not at a restart
        let listed = files::list_partition(&self.config.archive.root, self.topic(), partition)?;
        let known = self.lost.get(&partition).map(Vec::as_slice).unwrap_or_default();
        let gap = files::gaps(&listed).iter().any(|gap| !known.iter().any(|lost| lost.0 <= gap.0 && gap.1 <= lost.1));
        let front_deleted = match (listed.first(), self.first_held.get(&partition)) {
            (Some(f), Some(&held)) => f.first > held,
            (None, Some(_)) => true, // every file is gone
            (_, None) => false,
        };
        if gap || front_deleted {
            let epoch = self.open.get(&partition).map(|f| f.epoch).expect("open above");
            // files deleted from the front: the log start decides what can be read again
            let file = self.plan(partition, epoch, front_deleted).await?;
            self.open.insert(partition, file);
        }
        Ok(())
    }
}
