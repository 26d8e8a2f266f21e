//! The command line: argument parsing, logging setup and exit codes. Each subcommand is a
//! thin call into the library.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{MemoryLimit, Pipeline, Vars};
use crate::pipeline::RunOptions;
use crate::{Error, exit};

/// klantbeeld builds a golden customer table from the dumps of your source systems.
#[derive(Debug, Parser)]
#[command(name = "klantbeeld", version, about, long_about = None)]
pub struct Cli {
    /// Log format on stderr: human text, or JSON lines (with the run id) for log shippers.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Only warnings and errors in the log.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Checks a pipeline file: YAML, keys, variables, references. Reads no data.
    Validate(PipelineArgs),
    /// Shows what a run would do: sources with their files, rules, outputs.
    Plan(PlanArgs),
    /// Runs a pipeline and publishes its output.
    Run(RunArgs),
    /// Why two records are one customer, or why not; with one record, how its customer
    /// was built.
    Explain(ExplainArgs),
    /// Runs the pipeline's data tests against its last published output.
    Test(PipelineArgs),
    /// Estimates the probabilistic rules' weights from the inputs and writes the model
    /// file that `resolve.model` pins.
    Estimate(EstimateArgs),
    /// Scores a crosswalk against ground truth: pairwise precision, recall and F1.
    Eval(EvalArgs),
    /// Starts an Apache Ballista scheduler that knows klantbeeld's functions (scale-out).
    Scheduler(crate::distributed::SchedulerArgs),
    /// Starts an Apache Ballista executor with klantbeeld's functions and object stores.
    Executor(crate::distributed::ExecutorArgs),
    /// Demo data.
    Demo {
        #[command(subcommand)]
        command: DemoCommand,
    },
}

#[derive(Debug, Args)]
pub struct PipelineArgs {
    /// The pipeline YAML file.
    pub pipeline: PathBuf,
    /// A variable for `${name}` in the YAML and SQL, as NAME=VALUE (repeatable). Relative
    /// paths are taken from the current folder.
    #[arg(long = "var", value_name = "NAME=VALUE")]
    pub vars: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Also read and stage the inputs and count the pairs each blocking rule makes (and
    /// the blocks its size limit leaves out).
    #[arg(long)]
    pub pairs: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Memory the engine may use before spilling to disk, e.g. 2GB, or `auto` (half the
    /// machine's); overrides the YAML.
    #[arg(long, value_name = "SIZE")]
    pub memory_limit: Option<MemoryLimit>,
    /// Read at most N rows of every input file: a quick run on a sample.
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    pub limit: Option<usize>,
    /// Crosswalk of an earlier run whose customer ids are kept (default: the one published
    /// at the pipeline's output).
    #[arg(long, value_name = "URL")]
    pub previous: Option<String>,
    /// Folder for temporary files and spills (default: the system temp folder).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Take over the output's lock object (object stores) left by a run you know is dead.
    #[arg(long)]
    pub break_lock: bool,
    /// Where the queries run: in this process, or on an Apache Ballista cluster.
    #[arg(long, value_enum, default_value_t = EngineKind::Embedded)]
    pub engine: EngineKind,
    /// The Ballista scheduler, as df://HOST:PORT (with --engine ballista).
    #[arg(long, value_name = "URL", required_if_eq("engine", "ballista"))]
    pub scheduler: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EngineKind {
    Embedded,
    Ballista,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// A record as SYSTEM:ID (the source's name and its key), once or twice.
    #[arg(long = "record", value_name = "SYSTEM:ID", required = true, num_args = 1)]
    pub records: Vec<crate::explain::RecordRef>,
}

#[derive(Debug, Args)]
pub struct EstimateArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Where to write the model file (JSON); standard output when absent.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Ground truth Parquet with `source_system`, `source_record_id`, `person_id`.
    #[arg(long)]
    pub truth: String,
    /// The crosswalk to score (a published `customer_xref` folder or file).
    #[arg(long)]
    pub crosswalk: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Memory the engine may use before spilling, such as 2GB, or `auto` (half the machine's).
    #[arg(long, default_value = "auto")]
    pub memory_limit: MemoryLimit,
}

#[derive(Debug, Subcommand)]
pub enum DemoCommand {
    /// Writes the six source systems' dumps of a made-up retailer, with ground truth.
    Generate(crate::demo::GenerateArgs),
}

/// A count of at least one (`--limit 0` would read nothing and publish an empty table).
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("`{s}` is not a number of at least 1")),
    }
}

/// Parses `--var NAME=VALUE` pairs. A value that is a relative path (`./x`, `../x`,
/// `data/x`) is made absolute against the current folder, because that is where the user
/// typed it from.
pub fn parse_vars(pairs: &[String]) -> Result<Vars, Error> {
    let mut given = BTreeMap::new();
    for pair in pairs {
        let (k, v) =
            pair.split_once('=').ok_or_else(|| Error::Usage(format!("--var `{pair}`: expected NAME=VALUE")))?;
        let k = k.trim();
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(Error::Usage(format!("--var `{pair}`: a name is letters, digits and `_`")));
        }
        given.insert(k.to_string(), absolutize_path_value(v));
    }
    Ok(Vars::new(given))
}

fn absolutize_path_value(v: &str) -> String {
    // `.`, `..` and a name that exists here are paths too: `--var output=.` is this folder.
    let looks_relative_path = !v.contains("://")
        && !v.starts_with('/')
        && (matches!(v, "." | "..")
            || v.starts_with("./")
            || v.starts_with("../")
            || (v.contains('/') && !v.contains(' '))
            || (!v.is_empty() && std::path::Path::new(v).exists()));
    if looks_relative_path && let Ok(cwd) = std::env::current_dir() {
        return cwd.join(v).to_string_lossy().to_string();
    }
    v.to_string()
}

fn load(args: &PipelineArgs) -> Result<Pipeline, Error> {
    let vars = parse_vars(&args.vars)?;
    Ok(Pipeline::load(&args.pipeline, &vars)?)
}

/// Writes log lines to stderr; in JSON mode each line gets the run id as a top-level
/// field, also the lines the engine logs from its own worker threads.
struct StampedStderr {
    run_id: Option<std::sync::Arc<str>>,
}

struct StampedLine {
    run_id: Option<std::sync::Arc<str>>,
    buf: Vec<u8>,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for StampedStderr {
    type Writer = StampedLine;
    fn make_writer(&'a self) -> StampedLine {
        StampedLine { run_id: self.run_id.clone(), buf: Vec::new() }
    }
}

impl std::io::Write for StampedLine {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for StampedLine {
    fn drop(&mut self) {
        use std::io::Write;
        let text = String::from_utf8_lossy(&self.buf);
        let mut out = String::with_capacity(text.len() + 48);
        for line in text.split_inclusive('\n') {
            let body = line.trim_end_matches('\n');
            match (&self.run_id, body.starts_with('{') && body.ends_with('}')) {
                (Some(id), true) => {
                    out.push_str(&body[..body.len() - 1]);
                    out.push_str(&format!(",\"run_id\":{}}}", serde_json::Value::String(id.to_string())));
                    out.push_str(&line[body.len()..]);
                }
                _ => out.push_str(line),
            }
        }
        let _ = std::io::stderr().lock().write_all(out.as_bytes());
    }
}

fn init_logging(format: LogFormat, quiet: bool, run_id: Option<&str>, cluster_process: bool) {
    use tracing_subscriber::EnvFilter;
    // A Ballista client logs a line per query at info; the scheduler and executor
    // processes' own lines are what their operators read.
    let default = match (quiet, cluster_process) {
        (true, _) => "warn",
        (false, true) => "info",
        (false, false) => "info,ballista=warn",
    };
    let filter = EnvFilter::try_from_env("KLANTBEELD_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // Colour codes only for a terminal: a log file or a shipper gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(ansi);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(StampedStderr { run_id: run_id.map(std::sync::Arc::from) })
            .try_init(),
        LogFormat::Text => builder.with_writer(std::io::stderr).try_init(),
    };
}

/// Runs the command line and returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    // The run id exists before the first log line, so that every line can carry it.
    let run_id = matches!(cli.command, Command::Run(_)).then(crate::pipeline::new_run_id);
    let cluster_process = matches!(cli.command, Command::Scheduler(_) | Command::Executor(_));
    init_logging(cli.log_format, cli.quiet, run_id.as_deref(), cluster_process);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("klantbeeld: cannot start: {e}");
            return exit::OTHER;
        }
    };
    // A live progress line only for a person at a terminal reading text logs.
    let live = std::io::IsTerminal::is_terminal(&std::io::stderr()) && cli.log_format == LogFormat::Text && !cli.quiet;
    match runtime.block_on(dispatch(cli.command, live, run_id)) {
        Ok(()) => exit::OK,
        Err(e) => {
            if let Error::DataTests(outcomes) = &e {
                print!("{}", crate::check::report(outcomes));
            }
            let message = e.to_string();
            // One line on stderr for schedulers; the rest of a long engine message follows
            // in the log at debug level.
            let first = message.lines().next().unwrap_or_default();
            tracing::debug!(error = message.as_str(), "full error");
            eprintln!("klantbeeld: {first}");
            if e.is_out_of_memory() {
                // The engine's list of the biggest memory consumers says which step needs it.
                for line in message.lines().skip(1).filter(|l| !l.trim().is_empty()) {
                    eprintln!("klantbeeld:   {}", line.trim());
                }
                eprintln!(
                    "klantbeeld: hint: raise `engine.memory_limit` or pass --memory-limit (see README, Running in production)"
                );
            }
            e.exit_code()
        }
    }
}

async fn dispatch(command: Command, live_progress: bool, run_id: Option<String>) -> Result<(), Error> {
    match command {
        Command::Validate(args) => {
            let p = load(&args)?;
            crate::resolve::probabilistic::read_pinned(&p)?;
            println!(
                "{}: ok ({} sources, {} rules)",
                args.pipeline.display(),
                p.spec.sources.len(),
                p.spec.resolve.rules.len()
            );
            Ok(())
        }
        Command::Plan(args) => {
            let p = load(&args.pipeline)?;
            print!("{}", plan(&p, args.pairs).await?);
            Ok(())
        }
        Command::Run(args) => {
            let p = load(&args.pipeline)?;
            let memory_limit = args.memory_limit;
            let run_id = run_id.unwrap_or_else(crate::pipeline::new_run_id);
            let options = RunOptions {
                memory_limit,
                limit: args.limit,
                previous: args.previous,
                work_dir: args.work_dir,
                run_id: Some(run_id.clone()),
                break_lock: args.break_lock,
                progress: live_progress,
                engine: match (args.engine, args.scheduler) {
                    (EngineKind::Ballista, Some(scheduler)) => crate::engine::Engine::Ballista { scheduler },
                    (EngineKind::Ballista, None) => {
                        return Err(Error::Usage("--engine ballista needs --scheduler".into()));
                    }
                    (EngineKind::Embedded, _) => crate::engine::Engine::Embedded,
                },
            };
            let span = tracing::info_span!("run", run_id = run_id.as_str(), pipeline = p.spec.name.as_str());
            let manifest = {
                use tracing::Instrument;
                crate::pipeline::run(&p, &options).instrument(span).await?
            };
            println!(
                "published run {} to {}: {} customers from {} records",
                manifest.run_id,
                crate::storage::redact(&crate::storage::Location::parse(&p.spec.output, &p.base_dir)?.display()),
                manifest.match_summary.customers,
                manifest.match_summary.records
            );
            Ok(())
        }
        Command::Explain(args) => {
            let p = load(&args.pipeline)?;
            if args.records.len() > 2 {
                return Err(Error::Usage("explain takes one or two --record".into()));
            }
            print!("{}", crate::explain::explain(&p, &args.records).await?);
            Ok(())
        }
        Command::Test(args) => {
            let p = load(&args)?;
            let (outcomes, not_published) = crate::pipeline::test_published(&p).await?;
            for table in not_published {
                println!("not run: tests of `{table}` (not published; they run inside `klantbeeld run`)");
            }
            if outcomes.iter().any(|o| !o.passed) {
                return Err(Error::DataTests(outcomes));
            }
            println!("{} data tests passed", outcomes.len());
            Ok(())
        }
        Command::Estimate(args) => {
            let p = load(&args.pipeline)?;
            let models = crate::pipeline::estimate(&p).await?;
            let json = serde_json::to_string_pretty(&models).map_err(|e| Error::Other(e.to_string()))?;
            match &args.out {
                Some(path) => {
                    std::fs::write(path, format!("{json}\n"))
                        .map_err(|e| Error::Other(format!("{}: {e}", path.display())))?;
                    println!(
                        "wrote the model of {} rule(s) to {}; pin it with `resolve: {{ model: ... }}`",
                        models.len(),
                        path.display()
                    );
                }
                None => println!("{json}"),
            }
            Ok(())
        }
        Command::Eval(args) => {
            let cwd = std::env::current_dir().unwrap_or_default();
            let truth = crate::storage::Location::parse(&args.truth, &cwd)?;
            let crosswalk = crate::storage::Location::parse(&args.crosswalk, &cwd)?;
            let memory_limit = Some(args.memory_limit.bytes());
            let scratch = tempfile::tempdir().map_err(|e| Error::Other(format!("scratch folder: {e}")))?;
            let options = crate::engine::EngineOptions { memory_limit, ..Default::default() };
            let ctx = crate::engine::session(&options, scratch.path()).map_err(Error::engine("engine"))?;
            let e = crate::eval::evaluate(&ctx, &truth, &crosswalk, scratch.path()).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&e).map_err(|e| Error::Other(e.to_string()))?);
            } else {
                println!("{e}");
            }
            Ok(())
        }
        Command::Scheduler(args) => Ok(crate::distributed::run_scheduler(&args).await?),
        Command::Executor(args) => Ok(crate::distributed::run_executor(&args).await?),
        Command::Demo { command: DemoCommand::Generate(args) } => {
            let summary = crate::demo::generate(&args).map_err(|e| Error::Other(e.to_string()))?;
            println!("{summary}");
            Ok(())
        }
    }
}

/// The text `plan` prints: every source with its files, the rules and the outputs; with
/// `pairs`, what each blocking rule makes of the staged inputs.
pub async fn plan(p: &Pipeline, pairs: bool) -> Result<String, Error> {
    use std::fmt::Write;
    let scratch = tempfile::tempdir().map_err(|e| Error::Other(e.to_string()))?;
    let ctx = crate::pipeline::start_session(p, &Default::default(), scratch.path())?;
    let mut out = String::new();
    let spec = &p.spec;
    let _ = writeln!(out, "pipeline {} ({})", spec.name, p.file.display());
    let _ = writeln!(out, "\nstages: extract -> stage -> resolve -> golden -> enrich -> check -> publish");
    let _ = writeln!(out, "\nsources:");
    for (name, source) in &spec.sources {
        let (loc, files) = crate::extract::list_source(&ctx, p, name, source).await?;
        let role = match &source.belongs_to {
            Some(b) => format!("facts of {} via {}", b.source, b.column),
            None => "identity records".to_string(),
        };
        let size: u64 = files.iter().map(|f| f.size).sum();
        let _ = writeln!(out, "  {name}: {role}\n    {} -> {} file(s), {} bytes", loc.display(), files.len(), size);
        for f in files.iter().take(20) {
            let _ = writeln!(out, "      {}", loc.object_url(&f.location));
        }
        if files.is_empty() {
            let _ =
                writeln!(out, "      (no files{})", if source.optional { ", optional" } else { ": the run will fail" });
        }
    }
    let models = crate::enrich::load_models(p, &p.vars)?;
    if !models.is_empty() {
        let _ = writeln!(out, "\nmodels (in run order):");
        for m in &models {
            let deps = if m.depends_on.is_empty() { String::new() } else { format!(" <- {}", m.depends_on.join(", ")) };
            let batched = match &m.batch {
                Some(b) => match b.batches.0 {
                    Some(n) => format!(", in {n} batches by {}", b.by),
                    None => format!(", in batches by {}", b.by),
                },
                None => String::new(),
            };
            let _ = writeln!(out, "  {}{deps}   ({}{batched})", m.name, m.path.display());
        }
    }
    let tests: usize = crate::check::data_tests(p).iter().map(|(_, t)| t.len()).sum();
    let _ = writeln!(out, "\ndata tests: {tests}");
    let _ = writeln!(out, "\nidentity rules (in order):");
    let staged = if pairs { Some(crate::pipeline::staged_session(p, scratch.path()).await?) } else { None };
    for (i, rule) in spec.resolve.rules.iter().enumerate() {
        let _ = writeln!(out, "  {}. {}", i + 1, rule.name());
        let (Some(ctx), Some((records, blocking, max))) = (&staged, crate::resolve::rules::blocking_of(rule)) else {
            continue;
        };
        for key in blocking {
            let sizes = format!("({})", crate::resolve::rules::block_sizes_sql(&records, key));
            let sql = crate::resolve::rules::block_counts_sql(&sizes, max);
            let counts = ctx.sql(&sql).await.map_err(Error::engine("counting pairs"))?;
            let counts = counts.collect().await.map_err(Error::engine("counting pairs"))?;
            let n = |c: usize| {
                counts.first().map_or(0, |b| {
                    datafusion::arrow::array::AsArray::as_primitive::<datafusion::arrow::datatypes::Int64Type>(
                        b.column(c),
                    )
                    .value(0)
                })
            };
            let _ = writeln!(
                out,
                "     blocking [{}]: {} pairs; {} blocks over {max} records skipped ({} records)",
                key.join(", "),
                crate::progress::thousands(n(0) as u64),
                n(1),
                n(2)
            );
        }
    }
    let output = crate::storage::Location::parse(&spec.output, &p.base_dir)?;
    let _ = writeln!(out, "\noutput: {}", crate::storage::redact(&output.display()));
    let mut tables: Vec<String> = spec.outputs.keys().cloned().collect();
    for t in crate::tables::GOLDEN_TABLES {
        if !tables.iter().any(|x| x == t) {
            tables.push(t.to_string());
        }
    }
    for table in tables {
        let _ = writeln!(out, "  {table}");
    }
    Ok(out)
}
