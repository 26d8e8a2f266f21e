//! Scale-out on Apache Ballista: a scheduler and two executors started with the klantbeeld
//! binary on 127.0.0.1, and queries that call klantbeeld's functions run on them.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::prelude::{CsvReadOptions, SessionContext};

/// A scheduler and executors, stopped when dropped; their logs are files in `logs`.
struct LocalCluster {
    scheduler_port: u16,
    processes: Vec<Child>,
    logs: PathBuf,
}

fn spawn(args: &[String], log: &Path) -> Child {
    let file = std::fs::File::create(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_klantbeeld"))
        .args(args)
        .env("KLANTBEELD_LOG", "info")
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("start klantbeeld")
}

fn wait_for_port(port: u16, what: &str) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(60), "{what} did not listen on port {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl LocalCluster {
    fn start(dir: &Path, executors: usize) -> LocalCluster {
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let scheduler_port = free_port();
        let s = |x: &str| x.to_string();
        let mut processes = vec![spawn(
            &[s("scheduler"), s("--bind-host"), s("127.0.0.1"), s("--bind-port"), scheduler_port.to_string()],
            &logs.join("scheduler.log"),
        )];
        wait_for_port(scheduler_port, "the scheduler");
        for i in 0..executors {
            let (flight, grpc) = (free_port(), free_port());
            let work = dir.join(format!("executor{i}"));
            std::fs::create_dir_all(&work).unwrap();
            processes.push(spawn(
                &[
                    s("executor"),
                    s("--bind-host"),
                    s("127.0.0.1"),
                    s("--bind-port"),
                    flight.to_string(),
                    s("--grpc-port"),
                    grpc.to_string(),
                    s("--scheduler-host"),
                    s("127.0.0.1"),
                    s("--scheduler-port"),
                    scheduler_port.to_string(),
                    s("--concurrent-tasks"),
                    s("1"),
                    s("--work-dir"),
                    work.to_string_lossy().to_string(),
                ],
                &logs.join(format!("executor{i}.log")),
            ));
            wait_for_port(flight, "an executor");
        }
        LocalCluster { scheduler_port, processes, logs }
    }

    fn url(&self) -> String {
        format!("df://127.0.0.1:{}", self.scheduler_port)
    }

    /// Kills executor `i` (SIGKILL: no goodbye to the scheduler).
    fn kill_executor(&mut self, i: usize) {
        let p = &mut self.processes[1 + i];
        p.kill().unwrap();
        p.wait().unwrap();
    }

    fn jobs_finished(&self) -> usize {
        self.log("scheduler.log").matches("Job finished successfully").count()
    }

    fn assert_every_executor_ran_tasks(&self, executors: usize) {
        for i in 0..executors {
            let log = self.log(&format!("executor{i}.log"));
            assert!(log.contains("Execute task"), "executor {i} ran no task:\n{log}");
        }
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.logs.join(name)).unwrap_or_default()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for p in &mut self.processes {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

/// The loyalty cards of generated dumps, as a table over the listed files (Ballista loses
/// globs on the way to the executors).
async fn register_cards(ctx: &SessionContext, dumps: &Path) {
    let mut files: Vec<String> = std::fs::read_dir(dumps.join("pos"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("loyalty_cards"))
        .map(|p| p.to_string_lossy().to_string())
        .collect();
    files.sort();
    assert!(!files.is_empty());
    let df = ctx.read_csv(files, CsvReadOptions::new().has_header(true)).await.unwrap();
    ctx.register_table("cards", df.into_view()).unwrap();
}

/// Normalisation, phonetic keys and a self-join on them: staging's and the rules' kind of
/// query, in a fixed order.
const QUERY: &str = "
    WITH keyed AS (
        SELECT CAST(card_number AS VARCHAR) AS card, normalize_postcode(postcode) AS postcode,
               normalize_phone(CAST(phone AS VARCHAR)) AS phone,
               dutch_phonetic(split_last_name(full_name)) AS surname_key
        FROM cards)
    SELECT a.postcode, a.surname_key, count(*) AS pairs,
           min(a.card) AS first_card, max(jaro_winkler(a.phone, b.phone)) AS best_phone
    FROM keyed a JOIN keyed b ON a.postcode = b.postcode AND a.surname_key = b.surname_key AND a.card < b.card
    GROUP BY a.postcode, a.surname_key
    ORDER BY pairs DESC, a.postcode, a.surname_key";

#[tokio::test(flavor = "multi_thread")]
async fn klantbeelds_functions_run_on_a_two_executor_cluster_as_embedded() {
    let dir = tempfile::tempdir().unwrap();
    generate(&dir.path().join("data"), 3000, 11, false);
    let dumps = dir.path().join("data/dumps");
    let cluster = LocalCluster::start(dir.path(), 2);

    let embedded = klantbeeld::engine::session(&Default::default(), dir.path()).unwrap();
    register_cards(&embedded, &dumps).await;
    let expected = embedded.sql(QUERY).await.unwrap().collect().await.unwrap();

    // Four partitions for two executors of one task each: the work has to be shared.
    let config = klantbeeld::distributed::client_config().with_target_partitions(4);
    let remote = klantbeeld::distributed::connect(&cluster.url(), config).await.unwrap();
    register_cards(&remote, &dumps).await;
    let got = tokio::time::timeout(Duration::from_secs(180), async {
        remote.sql(QUERY).await.unwrap().collect().await.unwrap()
    })
    .await
    .expect("the cluster answered within 3 minutes");

    let (expected, got) =
        (pretty_format_batches(&expected).unwrap().to_string(), pretty_format_batches(&got).unwrap().to_string());
    assert!(expected.lines().count() > 20, "the query finds pairs:\n{expected}");
    assert_eq!(got, expected);
    cluster.assert_every_executor_ran_tasks(2);
    assert!(cluster.jobs_finished() > 0);
}

/// The retail pipeline on a two-executor cluster publishes what the embedded engine
/// publishes: the same partition of records into customers (the same ids) and the same
/// golden and enrichment values.
#[tokio::test(flavor = "multi_thread")]
async fn retail_pipeline_on_a_cluster_publishes_what_the_embedded_run_does() {
    let dir = tempfile::tempdir().unwrap();
    generate(&dir.path().join("data"), 1500, 23, false);
    let dumps = dir.path().join("data/dumps");
    let cluster = LocalCluster::start(dir.path(), 2);
    let (embedded, distributed) = (dir.path().join("embedded"), dir.path().join("distributed"));
    run_retail(&dumps, &embedded, &[]);
    let url = cluster.url();
    let out = run_retail(&dumps, &distributed, &["--engine", "ballista", "--scheduler", &url]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("published run"));
    let tables = ["customer_xref", "customers", "customer_changes", "match_edges", "customers_enriched"];
    assert_same_tables(&embedded, &distributed, &tables).await;
    let jobs = cluster.jobs_finished();
    assert!(jobs > 20, "the run's queries ran on the cluster ({jobs} jobs)");
    cluster.assert_every_executor_ran_tasks(2);
}

/// An executor killed in the middle of a run (over a previous publish of the same data):
/// either the cluster redoes its work and the run publishes the embedded result, or the
/// run fails and the previous publish stays as it was. Never a partial publish.
#[tokio::test(flavor = "multi_thread")]
async fn an_executor_killed_mid_run_never_leaves_a_partial_publish() {
    let dir = tempfile::tempdir().unwrap();
    generate(&dir.path().join("data"), 1500, 29, false);
    let dumps = dir.path().join("data/dumps");
    let (expected, output) = (dir.path().join("expected"), dir.path().join("out"));
    // The expected output of a second run over a first: customer changes depend on it.
    run_retail(&dumps, &expected, &[]);
    run_retail(&dumps, &expected, &[]);
    run_retail(&dumps, &output, &[]);
    let manifest_before = std::fs::read(output.join("_manifest.json")).unwrap();

    let mut cluster = LocalCluster::start(dir.path(), 2);
    let (input, out_var) = (format!("input={}", dumps.display()), format!("output={}", output.display()));
    let url = cluster.url();
    let mut run = Command::new(env!("CARGO_BIN_EXE_klantbeeld"))
        .args(["run", retail_yaml().to_str().unwrap(), "--var", &input, "--var", &out_var])
        .args(["--engine", "ballista", "--scheduler", &url])
        .env("KLANTBEELD_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while cluster.jobs_finished() < 15 {
        assert!(run.try_wait().unwrap().is_none(), "the run ended before the kill");
        assert!(start.elapsed() < Duration::from_secs(120), "the run made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(run.try_wait().unwrap().is_none(), "the run ended before the kill");
    cluster.kill_executor(1);

    let status = loop {
        if let Some(status) = run.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(420) {
            let _ = run.kill();
            panic!("the run neither finished nor failed within 7 minutes of the kill");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if status.success() {
        let manifest_after = std::fs::read(output.join("_manifest.json")).unwrap();
        assert_ne!(manifest_after, manifest_before, "a successful run publishes its own manifest");
        // Same data as the publish before it: no customer changed, in both.
        let changes = |out: PathBuf| async move {
            scalar(&out, &["customer_changes"], "SELECT count(*) FROM customer_changes").await
        };
        assert_eq!(changes(output.clone()).await, changes(expected.clone()).await);
    } else {
        let mut stderr = String::new();
        std::io::Read::read_to_string(run.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        assert!(stderr.contains("klantbeeld:"), "a failed run says why: {stderr}");
        assert_eq!(std::fs::read(output.join("_manifest.json")).unwrap(), manifest_before);
    }
    // Either way the output is a whole publish of this data.
    assert!(output.join("_SUCCESS").exists());
    assert_same_tables(&expected, &output, &["customer_xref", "customers", "match_edges"]).await;
}
