//! `lambda`: the command-line entry point. Parses arguments, loads the configuration and calls a layer's
//! `run(config, ..., shutdown)`; the logic lives in the library crates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use common::Config;
use lambda::demo::DemoOptions;
use lambda::produce::ProduceOptions;

// mimalloc keeps freed memory for reuse: with glibc's allocator a batch run spent about a fifth of its time
// in the kernel zeroing fresh pages for Polars' large, short-lived buffers (BENCHMARKS.md, batch profile).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "lambda", version, about = "Lambda-architecture analytics over a Kafka topic of JSON events")]
struct Cli {
    /// TOML configuration file (over the embedded defaults; LAMBDA__SECTION__KEY variables override both).
    #[arg(long, short, global = true, env = "LAMBDA_CONFIG")]
    config: Option<PathBuf>,
    /// Log filter, e.g. `info`, `debug`, `info,rdkafka=warn`.
    #[arg(long, global = true, default_value = "info", env = "RUST_LOG")]
    log: String,
    /// Serve this process's Prometheus metrics at http://ADDR/metrics (speed, archive, batch schedule; serve
    /// has them on serve.listen too), e.g. 0.0.0.0:9101.
    #[arg(long, global = true, env = "LAMBDA_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run everything in one process: mock Kafka, speed layer, archiver, batch every 30 s, HTTP API.
    Demo {
        /// Produce this .csv or .jsonl file instead of generated events.
        #[arg(long)]
        input: Option<PathBuf>,
        /// Number of generated events.
        #[arg(long, default_value_t = 20_000)]
        events: usize,
        /// Production rate, events per second.
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        /// Percentage of events produced twice (exercises dedup).
        #[arg(long, default_value_t = 2.0)]
        duplicates: f64,
        /// HTTP listen address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Working directory (cleared at start if an earlier demo made it).
        #[arg(long, default_value = "lambda-data/demo")]
        data_dir: PathBuf,
        /// Batch schedule (cron with seconds, or 5 fields).
        #[arg(long, default_value = "*/30 * * * * *")]
        batch_cron: String,
        /// View store URL, e.g. postgres://user@host/db (must be empty); default: SQLite under --data-dir.
        #[arg(long)]
        store: Option<String>,
        /// Live stream: every event's time is the moment it is produced (as a live shop's would be), so a
        /// dashboard's last hour moves on refresh. Default: the input's own (historical) times.
        #[arg(long)]
        live: bool,
    },
    /// Run the speed layer (Kafka -> speed rows).
    Speed,
    /// Run the archiver (Kafka -> Parquet master dataset).
    Archive,
    /// The batch job.
    Batch {
        #[command(subcommand)]
        command: BatchCommand,
    },
    /// Run the HTTP API (and the SQL mirror when bi.url is set).
    Serve,
    /// Run only the SQL mirror: copy the views into the PostgreSQL database of bi.url every bi.interval.
    Mirror,
    /// Send events from a .csv or .jsonl file to Kafka, keyed by schema.message_key.
    Produce {
        #[arg(long)]
        input: PathBuf,
        /// Bootstrap servers (default: kafka.brokers).
        #[arg(long)]
        brokers: Option<String>,
        /// Topic (default: kafka.topic).
        #[arg(long)]
        topic: Option<String>,
        /// Events per second (default: as fast as possible).
        #[arg(long)]
        rate: Option<f64>,
        /// Percentage of events sent twice, a little later.
        #[arg(long, default_value_t = 0.0)]
        duplicates: f64,
    },
    /// Synthetic e-commerce events at scale, as JSON Lines or straight into the archive's Parquet layout.
    ///
    /// The value distributions are fitted on --fit (a CSV with the e-commerce header), or come from the
    /// built-in model (fitted on the real November 2019 sample).
    #[command(group(clap::ArgGroup::new("output").required(true).args(["out", "archive"])))]
    Generate {
        /// Number of events, e.g. 1000000, 1e7 or 10M.
        #[arg(long, value_parser = parse_count)]
        events: u64,
        /// Write Kafka-shaped JSON Lines here (feed them to `lambda produce`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Write archive Parquet files under this root, as the archiver would (must hold no archive yet).
        #[arg(long)]
        archive: Option<PathBuf>,
        /// Partitions of the simulated topic (with --archive).
        #[arg(long, default_value_t = 3)]
        partitions: i32,
        /// Records per archive file (default: archive.max_file_records).
        #[arg(long)]
        file_records: Option<usize>,
        /// Fit the distributions on this CSV file instead of using the built-in model.
        #[arg(long)]
        fit: Option<PathBuf>,
        /// Percentage of events that are exact copies of a recent event.
        #[arg(long, default_value_t = 0.0)]
        duplicates: f64,
        /// Percentage of events whose event time is up to --late-max before their production time.
        #[arg(long, default_value_t = 0.0)]
        late: f64,
        /// How late a late event can be.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        late_max: std::time::Duration,
        /// Distinct products (default: events / 30, between 1,000 and 200,000).
        #[arg(long)]
        products: Option<usize>,
        /// Distinct users (default: events / 18).
        #[arg(long)]
        users: Option<usize>,
        /// Mean events per session.
        #[arg(long, default_value_t = 4.9)]
        session_mean: f64,
        /// Zipf exponent of product popularity and user activity.
        #[arg(long, default_value_t = 1.0)]
        zipf: f64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// View-store tools.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// SQL views with the merge rule, for Superset and other BI tools (DESIGN.md §5, §7).
    Views {
        #[command(subcommand)]
        command: ViewsCommand,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum BatchCommand {
    /// Run once and print the published manifest.
    Run,
    /// Compute the batch view without publishing it: one Parquet file per view and granularity under --out.
    Export {
        /// Output directory (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Cutoff of one partition, `PARTITION=OFFSET` (repeat per partition). Without any, the cutoffs a
        /// run would use now (from the store's seals and the archive).
        #[arg(long = "cutoff", value_parser = parse_cutoff)]
        cutoffs: Vec<(i32, i64)>,
    },
    /// Run on a cron schedule until stopped.
    Schedule {
        /// Cron expression (default: batch.cron).
        #[arg(long)]
        cron: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Create the store's schema (store.url), or apply the migrations it lacks; safe to run again.
    /// ScyllaDB/Cassandra: creates the keyspace too when it is missing (deploy/scylla/schema.cql).
    Init {
        /// Store URL (default: store.url): sqlite://PATH, postgres://USER@HOST/DB or scylla://HOST:9042/KEYSPACE.
        #[arg(long)]
        store: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ViewsCommand {
    /// Print the SQL that (re)creates the views v_<view>_<granularity> (and the e-commerce funnel and
    /// revenue views): idempotent, one transaction.
    Sql {
        /// SQL dialect (default: that of --url, else of store.url, else of bi.url).
        #[arg(long)]
        dialect: Option<serving_layer::sql_views::Dialect>,
        /// The database the script is meant for (default: store.url when SQLite or PostgreSQL, else bi.url).
        #[arg(long)]
        url: Option<String>,
    },
    /// Create or update the views on the SQL store (or the PostgreSQL mirror of bi.url for a ScyllaDB
    /// store); drops the views an earlier install made first. Re-run after a change of [[views]].
    Install {
        /// The database (default: store.url when SQLite or PostgreSQL, else bi.url).
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate FILE (over the defaults); the error names the bad key.
    Check { file: PathBuf },
    /// Print the effective configuration as TOML.
    Show,
}

/// Parses `PARTITION=OFFSET`.
fn parse_cutoff(s: &str) -> Result<(i32, i64), String> {
    let (p, o) = s.split_once('=').ok_or_else(|| format!("`{s}`: expected PARTITION=OFFSET, e.g. 0=1500000"))?;
    let p = p.trim().parse().map_err(|_| format!("`{s}`: partition `{p}` is not an integer"))?;
    let o = o.trim().parse().map_err(|_| format!("`{s}`: offset `{o}` is not an integer"))?;
    Ok((p, o))
}

/// Parses a count written as `1000000`, `1_000_000`, `1e6` or `1M` (k, M, G).
fn parse_count(s: &str) -> Result<u64, String> {
    let t = s.trim().replace('_', "");
    let (num, mult) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1e3),
        Some('M') => (&t[..t.len() - 1], 1e6),
        Some('G') => (&t[..t.len() - 1], 1e9),
        _ => (t.as_str(), 1.0),
    };
    let value: f64 = num.parse().map_err(|_| format!("`{s}` is not a count (e.g. 1000000, 1e6, 1M)"))?;
    let n = value * mult;
    if n < 0.0 || n.fract() != 0.0 || n > 1e12 {
        return Err(format!("`{s}` is not a whole count between 0 and 1e12"));
    }
    Ok(n as u64)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    common::telemetry::init_tracing(&cli.log);
    let _ = common::telemetry::prometheus(); // every layer's metrics go to /metrics from the first record
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[allow(clippy::print_stdout)] // the CLI prints its results
async fn run(cli: Cli) -> Result<()> {
    if let Command::Config { command: ConfigCommand::Check { file } } = &cli.command {
        Config::load(Some(file)).with_context(|| format!("{} is invalid", file.display()))?;
        println!("{}: ok", file.display());
        return Ok(());
    }
    let config = Config::load(cli.config.as_deref())?;
    let shutdown = common::shutdown::on_signal();
    if let Some(addr) = cli.metrics_listen {
        // bound before the layer starts, so a taken port fails the start instead of every scrape
        let listener = serving_layer::bind(addr).await.context("--metrics-listen")?;
        let stop = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = serving_layer::serve_metrics(listener, stop).await {
                tracing::error!(error = %e, "the metrics server stopped");
            }
        });
    }
    match cli.command {
        Command::Demo { input, events, rate, duplicates, listen, data_dir, batch_cron, store, live } => {
            let options = DemoOptions {
                input,
                events,
                rate,
                duplicates_pct: duplicates,
                data_dir,
                listen: Some(listen),
                batch_cron,
                store,
                live,
                ..DemoOptions::default()
            };
            lambda::demo::run(config, options, shutdown).await?;
        }
        Command::Speed => {
            let Some(store) = common::store::open_config_waiting(&config.store, &shutdown).await? else {
                return Ok(());
            };
            speed_layer::run(config, store, shutdown).await?;
        }
        Command::Archive => batch_layer::archive::archiver::run(config, shutdown).await?,
        Command::Batch { command: BatchCommand::Run } => {
            let store = common::store::open_config(&config.store).await?;
            let options = batch_layer::job::RunOptions { progress: true };
            match batch_layer::job::run_once(&config, &store, &options).await? {
                Some(manifest) => println!("{}", serde_json::to_string_pretty(&manifest)?),
                None => println!("another batch run holds the lease; nothing done"),
            }
        }
        Command::Batch { command: BatchCommand::Export { out, cutoffs } } => {
            let (starts, cutoffs) = if cutoffs.is_empty() {
                let store = common::store::open_config(&config.store).await?;
                let plan = batch_layer::job::cutoffs(&config, &store).await?;
                (plan.archive_starts, plan.cutoffs)
            } else {
                (Default::default(), cutoffs.into_iter().collect())
            };
            let report =
                tokio::task::spawn_blocking(move || batch_layer::job::export::export(&config, &starts, &cutoffs, &out))
                    .await
                    .context("the export task panicked")??;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Command::Batch { command: BatchCommand::Schedule { cron } } => {
            let Some(store) = common::store::open_config_waiting(&config.store, &shutdown).await? else {
                return Ok(());
            };
            let cron = cron.unwrap_or_else(|| config.batch.cron.clone());
            batch_layer::schedule::run(config, store, &cron, shutdown).await?;
        }
        Command::Serve => {
            let Some(store) = common::store::open_config_waiting(&config.store, &shutdown).await? else {
                return Ok(());
            };
            let mirror = (!config.bi.url.is_empty())
                .then(|| tokio::spawn(serving_layer::mirror::run(config.clone(), store.clone(), shutdown.clone())));
            let served = serving_layer::run(config, store, shutdown.clone()).await;
            shutdown.cancel();
            if let Some(mirror) = mirror {
                mirror.await.context("the SQL mirror panicked")?.context("SQL mirror (bi.url)")?;
            }
            served?;
        }
        Command::Mirror => {
            anyhow::ensure!(!config.bi.url.is_empty(), "bi.url is not set: nothing to mirror to");
            let Some(store) = common::store::open_config_waiting(&config.store, &shutdown).await? else {
                return Ok(());
            };
            serving_layer::mirror::run(config, store, shutdown).await?;
        }
        Command::Produce { input, brokers, topic, rate, duplicates } => {
            let mut config = config;
            if let Some(b) = brokers {
                config.kafka.brokers = b;
            }
            if let Some(t) = topic {
                config.kafka.topic = t;
            }
            let options = ProduceOptions { rate, duplicates_pct: duplicates, ..Default::default() };
            let report = lambda::produce::run(&config, &input, &options, &shutdown).await?;
            println!("sent {} messages ({} duplicates) to {}", report.sent, report.duplicates, config.kafka.topic);
        }
        Command::Generate {
            events,
            out,
            archive,
            partitions,
            file_records,
            fit,
            duplicates,
            late,
            late_max,
            products,
            users,
            session_mean,
            zipf,
            seed,
        } => {
            let model = match &fit {
                Some(path) => {
                    let model = lambda::generate::Model::fit(path)?;
                    eprintln!("{}: {}", path.display(), model.summary());
                    model
                }
                None => lambda::generate::Model::builtin(),
            };
            let options = lambda::generate::GenerateOptions {
                events,
                seed,
                duplicates: duplicates / 100.0,
                late: late / 100.0,
                late_max_s: late_max.as_secs() as i64,
                shape: lambda::generate::Shape { products, users, zipf, session_mean, ..Default::default() },
                ..Default::default()
            };
            if let Some(out) = out {
                let copies = lambda::generate::write_jsonl(&out, &model, options)?;
                println!("wrote {events} events ({copies} duplicates) to {}", out.display());
            } else if let Some(root) = archive {
                let bar = indicatif::ProgressBar::new(events).with_style(
                    indicatif::ProgressStyle::with_template(
                        "{spinner} generating [{bar:30}] {human_pos}/{human_len} {per_sec} eta {eta}",
                    )
                    .expect("static template")
                    .progress_chars("=> "),
                );
                let file_records = file_records.unwrap_or(config.archive.max_file_records);
                let report =
                    lambda::generate::write_archive(&root, &config, partitions, file_records, &model, options, |n| {
                        bar.set_position(n)
                    })?;
                bar.finish_and_clear();
                println!(
                    "wrote {} events ({} duplicates) in {} files under {}; log end offsets {:?}",
                    report.events,
                    report.duplicates,
                    report.files,
                    root.display(),
                    report.ends
                );
            }
        }
        Command::Store { command: StoreCommand::Init { store } } => {
            for line in common::store::init(store.as_deref().unwrap_or(&config.store.url)).await? {
                println!("{line}");
            }
        }
        Command::Views { command } => {
            let views = common::view::ViewSet::new(&config);
            let url = |given: Option<String>| -> anyhow::Result<String> {
                use serving_layer::sql_views::Dialect;
                if let Some(url) = given {
                    return Ok(url);
                }
                if Dialect::of_url(&config.store.url).is_some() {
                    Ok(config.store.url.clone())
                } else if !config.bi.url.is_empty() {
                    Ok(config.bi.url.clone())
                } else {
                    anyhow::bail!(
                        "store.url `{}` is not a SQL database and bi.url is empty: set bi.url to the PostgreSQL \
                         mirror (or pass --url)",
                        config.store.url
                    )
                }
            };
            match command {
                ViewsCommand::Sql { dialect, url: given } => {
                    let dialect = match dialect {
                        Some(d) => d,
                        None => {
                            let url = url(given)?;
                            serving_layer::sql_views::Dialect::of_url(&url)
                                .ok_or_else(|| anyhow::anyhow!("`{url}` is not a sqlite:// or postgres:// URL"))?
                        }
                    };
                    print!("{}", serving_layer::sql_views::script(&views, dialect)?);
                }
                ViewsCommand::Install { url: given } => {
                    let url = url(given)?;
                    let names = serving_layer::sql_views::install(&url, &views).await?;
                    println!("installed {} views: {}", names.len(), names.join(", "));
                }
            }
        }
        Command::Config { command: ConfigCommand::Show } => print!("{}", toml::to_string_pretty(&config)?),
        Command::Config { command: ConfigCommand::Check { .. } } => unreachable!("handled above"),
    }
    Ok(())
}
