//! Helpers shared by the integration tests: generated dumps, runs of the real binary,
//! and reading published Parquet back.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

use datafusion::arrow::array::RecordBatch;
use datafusion::prelude::{ParquetReadOptions, SessionContext};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn retail_yaml() -> PathBuf {
    repo().join("pipelines/retail.yaml")
}

/// Generates demo dumps with the library, as `demo generate` does.
pub fn generate(out: &Path, persons: usize, seed: u64, day2: bool) {
    let args = klantbeeld::demo::GenerateArgs {
        persons,
        seed,
        out: out.to_path_buf(),
        day2,
        as_of: chrono::NaiveDate::from_ymd_opt(2026, 11, 22).unwrap(),
        noise: klantbeeld::demo::Profile::Base,
    };
    klantbeeld::demo::generate(&args).expect("generate demo data");
}

/// Runs the klantbeeld binary.
pub fn klantbeeld(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_klantbeeld"))
        .args(args)
        .env("KLANTBEELD_LOG", "warn")
        .output()
        .expect("run klantbeeld")
}

/// Runs the retail pipeline from `input` to `output`, asserting success.
/// `klantbeeld run PIPELINE --var input=.. --var output=.. EXTRA..`, whatever its outcome.
pub fn run_pipeline(pipeline: &Path, input: &Path, output: &Path, extra: &[&str]) -> Output {
    let input = format!("input={}", input.display());
    let output_var = format!("output={}", output.display());
    let mut args = vec!["run", pipeline.to_str().unwrap(), "--var", &input, "--var", &output_var];
    args.extend_from_slice(extra);
    klantbeeld(&args)
}

pub fn run_retail(input: &Path, output: &Path, extra: &[&str]) -> Output {
    let out = run_pipeline(&retail_yaml(), input, output, extra);
    assert!(
        out.status.success(),
        "run failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Runs SQL over published tables registered by name (`customers` -> `out/customers/`).
pub async fn query(output: &Path, tables: &[&str], sql: &str) -> Vec<RecordBatch> {
    let ctx = SessionContext::new();
    for t in tables {
        ctx.register_parquet(*t, &format!("{}/{t}/", output.display()), ParquetReadOptions::default())
            .await
            .unwrap_or_else(|e| panic!("register {t}: {e}"));
    }
    ctx.sql(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}")).collect().await.unwrap()
}

/// The single i64 a query returns.
pub async fn scalar(output: &Path, tables: &[&str], sql: &str) -> i64 {
    use datafusion::arrow::array::AsArray;
    let batches = query(output, tables, sql).await;
    let col =
        datafusion::arrow::compute::cast(batches[0].column(0), &datafusion::arrow::datatypes::DataType::Int64).unwrap();
    col.as_primitive::<datafusion::arrow::datatypes::Int64Type>().value(0)
}

/// Asserts that two runs published the same rows in `tables` (as multisets), and that
/// the tables are not nearly empty.
pub async fn assert_same_tables(a: &Path, b: &Path, tables: &[&str]) {
    let ctx = SessionContext::new();
    for table in tables {
        for (side, out) in [("a", a), ("b", b)] {
            let url = format!("{}/{table}/", out.display());
            ctx.register_parquet(format!("{table}_{side}"), &url, ParquetReadOptions::default()).await.unwrap();
        }
        let sql = format!(
            "SELECT (SELECT count(*) FROM {table}_a), \
             (SELECT count(*) FROM (SELECT * FROM {table}_a EXCEPT ALL SELECT * FROM {table}_b)) + \
             (SELECT count(*) FROM (SELECT * FROM {table}_b EXCEPT ALL SELECT * FROM {table}_a))"
        );
        let counts = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
        let get = |i: usize| datafusion::arrow::util::display::array_value_to_string(counts[0].column(i), 0).unwrap();
        assert!(get(0).parse::<i64>().unwrap() > 100, "{table} is nearly empty");
        assert_eq!(get(1), "0", "{table} differs between {} and {}", a.display(), b.display());
    }
}

/// A copy of the pipeline with its text changed, in a temporary folder next to a copy of
/// the SQL models.
pub fn pipeline_variant(dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    // The copy lives elsewhere, so the models folder becomes absolute.
    let text = std::fs::read_to_string(retail_yaml())
        .unwrap()
        .replace("  path: ../sql", &format!("  path: {}", repo().join("sql").display()));
    let path = dir.join("pipeline.yaml");
    std::fs::write(&path, edit(text)).unwrap();
    path
}

/// A tool installed by `scripts/test`; the test fails (never skips) when it is missing.
pub fn tool(var: &str) -> PathBuf {
    let path = std::env::var(var)
        .unwrap_or_else(|_| panic!("{var} is not set: run the tests with scripts/test, which installs the tools"));
    let path = PathBuf::from(path);
    assert!(path.exists(), "{} does not exist: run scripts/test", path.display());
    path
}

/// Runs Python code with the test tools' interpreter; returns stdout, panics on failure.
pub fn python(code: &str) -> String {
    let out = std::process::Command::new(tool("KLANTBEELD_TEST_PYTHON")).arg("-c").arg(code).output().unwrap();
    assert!(out.status.success(), "python failed:\n{}\n{}", String::from_utf8_lossy(&out.stderr), code);
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A free TCP port on the loopback interface.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A real S3-compatible server (moto) on loopback, stopped when dropped.
pub struct S3Server {
    pub port: u16,
    child: std::process::Child,
}

impl S3Server {
    pub fn start() -> S3Server {
        let port = free_port();
        let child = std::process::Command::new(tool("KLANTBEELD_TEST_MOTO"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start moto_server");
        let server = S3Server { port, child };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("moto_server did not start on port {port}");
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates buckets with boto3, as any S3 tool would.
    pub fn create_buckets(&self, names: &[&str]) {
        self.create_buckets_at(&self.endpoint(), names);
    }

    pub fn create_buckets_at(&self, endpoint: &str, names: &[&str]) {
        let list = names.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(",");
        python(&format!(
            "import boto3\ns3 = boto3.client('s3', endpoint_url='{endpoint}', aws_access_key_id='test', \
             aws_secret_access_key='test', region_name='us-east-1')\nfor b in [{list}]:\n    s3.create_bucket(Bucket=b)\n"
        ));
    }

    /// The environment an S3 client reads, pointing at `endpoint`.
    pub fn env(endpoint: &str) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", endpoint.into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// An object_store client for one bucket.
    pub fn bucket(&self, name: &str) -> std::sync::Arc<dyn object_store::ObjectStore> {
        std::sync::Arc::new(
            object_store::aws::AmazonS3Builder::new()
                .with_bucket_name(name)
                .with_endpoint(self.endpoint())
                .with_allow_http(true)
                .with_region("us-east-1")
                .with_access_key_id("test")
                .with_secret_access_key("test")
                .with_virtual_hosted_style_request(false)
                .build()
                .unwrap(),
        )
    }

    /// Uploads a local folder under a prefix.
    pub async fn upload(&self, bucket: &str, prefix: &str, dir: &Path) {
        use object_store::ObjectStoreExt;
        let store = self.bucket(bucket);
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let rel = p.strip_prefix(dir).unwrap().to_string_lossy().to_string();
                    let key = object_store::path::Path::from(format!("{prefix}/{rel}"));
                    store.put(&key, std::fs::read(&p).unwrap().into()).await.unwrap();
                }
            }
        }
    }

    /// Text of one object, if it exists.
    pub async fn get_text(&self, bucket: &str, key: &str) -> Option<String> {
        use object_store::ObjectStoreExt;
        let r = self.bucket(bucket).get(&object_store::path::Path::from(key)).await.ok()?;
        Some(String::from_utf8_lossy(&r.bytes().await.unwrap()).to_string())
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the klantbeeld binary with extra environment variables.
pub fn klantbeeld_env(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_klantbeeld"));
    cmd.args(args).env("KLANTBEELD_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run klantbeeld")
}
