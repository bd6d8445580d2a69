//! The archiver: its own consumer group, writing every record to the Parquet master dataset.
//!
//! Per partition it buffers records and closes a file once it holds `archive.max_file_records` records or
//! its first record has waited `archive.max_file_age`. A file is written to a temporary name, fsynced,
//! renamed and the directory fsynced; only then is the Kafka offset committed. On assignment it resumes at
//! the largest `next` among the partition's files, not at the committed offset, so a crash between the
//! rename and the commit archives nothing twice (DESIGN.md §4). Records that fail to decode go to the
//! dead-letter file of the same offset range.

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
use tracing::{debug, info, warn};

use super::files::{self, file_name, partition_dir};
use super::parquet_file::{self, ArchivedRecord};
use crate::metrics as m;
use crate::{Error, Result};

type Kafka = StreamConsumer<AssignmentContext>;

#[derive(Debug)]
struct OpenFile {
    epoch: u64,
    /// First offset the file covers (the previous file's `next`).
    first: i64,
    /// Offset after the last record taken.
    next: i64,
    records: Vec<ArchivedRecord>,
    dead_letters: Vec<DeadLetter>,
    opened_at: Option<Instant>,
    /// Set after seeking back to the archive's end: a record past `first` then means the log no longer
    /// holds the offsets in between, and the file starts at that record instead (a visible gap).
    rewound: bool,
}

impl OpenFile {
    fn new(epoch: u64, first: i64) -> Self {
        OpenFile {
            epoch,
            first,
            next: first,
            records: Vec::new(),
            dead_letters: Vec::new(),
            opened_at: None,
            rewound: false,
        }
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
            _ => match self.resume_point(partition)? {
                Some(resume) if offset > resume => {
                    // The group's committed offset is past the archive's end (files were removed?): read
                    // again from the end of the files rather than let a file claim offsets it never saw.
                    warn!(partition, resume, offset, "committed offset is past the archive; seeking back");
                    self.seek(partition, resume).await?;
                    let mut f = OpenFile::new(epoch, resume);
                    f.rewound = true;
                    self.open.insert(partition, f);
                    return Ok(());
                }
                resume => OpenFile::new(epoch, resume.unwrap_or(offset)),
            },
        };
        if file.rewound && file.len() == 0 && offset > file.first {
            warn!(
                partition,
                from = file.first,
                to = offset,
                "offsets are no longer in the log; the archive has a gap there"
            );
            file.first = offset;
            file.next = offset;
        }
        file.rewound = false;
        if offset >= file.next {
            let timestamp_ms = message.timestamp().to_millis();
            let payload = message.payload().unwrap_or_default();
            match self.decoder.decode(payload) {
                Ok(event) => file.records.push(ArchivedRecord { offset, timestamp_ms, event }),
                Err(e) => {
                    metrics::counter!(m::DEAD_LETTERS, "consumer" => "archive").increment(1);
                    file.dead_letters.push(DeadLetter::new(
                        self.topic(),
                        partition,
                        offset,
                        timestamp_ms,
                        payload,
                        e.0,
                    ));
                }
            }
            file.next = offset + 1;
            file.opened_at.get_or_insert_with(Instant::now);
        }
        let full = file.len() >= self.config.archive.max_file_records;
        self.open.insert(partition, file);
        if full {
            self.close(partition).await?;
        }
        Ok(())
    }

    async fn seek(&self, partition: i32, offset: i64) -> Result<()> {
        let (consumer, topic) = (self.consumer.clone(), self.topic().to_owned());
        tokio::task::spawn_blocking(move || {
            consumer.seek(&topic, partition, Offset::Offset(offset), Duration::from_secs(10))
        })
        .await
        .expect("seek task does not panic")
        .map_err(Error::kafka("seek"))
    }

    /// Largest `next` among the partition's files; also clears a crash's leftovers (temporary files, and
    /// dead-letter files at or past that point, whose Parquet twin never got renamed).
    fn resume_point(&self, partition: i32) -> Result<Option<i64>> {
        let root = &self.config.archive.root;
        let dir = partition_dir(root, self.topic(), partition);
        files::remove_temp_files(&dir);
        let resume = files::list_partition(root, self.topic(), partition)?.iter().map(|f| f.next).max();
        let dl_dir = dead_letter::partition_dir(root, "archive", self.topic(), partition);
        files::remove_temp_files(&dl_dir);
        if let Ok(entries) = fs::read_dir(&dl_dir) {
            for e in entries.flatten() {
                let first = e.file_name().to_string_lossy().split('-').next().and_then(|s| s.parse::<i64>().ok());
                if first.is_some_and(|first| first >= resume.unwrap_or(0)) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        info!(partition, ?resume, "archiver resuming after its last file");
        Ok(resume)
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

    /// Writes the open file of `partition` (dead letters first, then Parquet), then commits its `next`.
    async fn close(&mut self, partition: i32) -> Result<()> {
        let Some(file) = self.open.get_mut(&partition) else { return Ok(()) };
        if file.len() == 0 {
            return Ok(());
        }
        if self.consumer.context().epoch(partition) != Some(file.epoch) {
            self.open.remove(&partition); // revoked: the new owner rewrites this range
            return Ok(());
        }
        let (first, next) = (file.first, file.next);
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
        debug!(partition, first, next, records = count, "archive file written");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(self.topic(), partition, Offset::Offset(next)).map_err(Error::kafka("commit"))?;
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            warn!(partition, next, error = %e, "offset commit failed; the archiver resumes from its files anyway");
        }
        Ok(())
    }
}
