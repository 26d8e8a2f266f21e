//! Scale-out on Apache Ballista. `klantbeeld scheduler` and `klantbeeld executor` run
//! Ballista's own scheduler and executor, with klantbeeld's SQL functions and object
//! stores added, so that a query plans and runs the same on a cluster as embedded;
//! [`connect`] gives a session whose queries run on such a cluster.
//!
//! Stock Ballista binaries cannot serve klantbeeld: a plan that calls `normalize_phone`
//! is refused by a scheduler that does not know the function, and an executor without our
//! store registry cannot open `gs://` or `az://` inputs.

use std::sync::Arc;

use ballista::prelude::SessionContextExt;
use ballista_core::extension::SessionConfigExt;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::start_server;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::SessionState;
use datafusion::prelude::{SessionConfig, SessionContext};
use object_store::ObjectStore;
use url::Url;

use crate::config::StorageSpec;
use crate::storage::{Location, StoreKind, build_store};

#[derive(Debug, thiserror::Error)]
pub enum DistributedError {
    #[error("{role}: `{address}` is not a host:port to bind ({source})")]
    Address { role: &'static str, address: String, source: std::net::AddrParseError },
    #[error("{role}: {source}")]
    Ballista { role: &'static str, source: ballista_core::error::BallistaError },
    #[error("scheduler {url}: {source}")]
    Connect { url: String, source: DataFusionError },
}

impl DistributedError {
    /// What the user has to do about this error (the exit code).
    pub fn exit_class(&self) -> crate::ExitClass {
        match self {
            DistributedError::Address { .. } => crate::ExitClass::Config,
            _ => crate::ExitClass::Other,
        }
    }
}

/// `klantbeeld scheduler`: the flags of Ballista's `ballista-scheduler` that apply.
#[derive(Debug, Clone, clap::Args)]
pub struct SchedulerArgs {
    /// Local address to bind the gRPC service to.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind_host: String,
    /// Port of the gRPC service (clients connect to df://HOST:PORT).
    #[arg(long, default_value_t = 50050)]
    pub bind_port: u16,
    /// Host name executors and clients reach this scheduler at, when not the bind host.
    #[arg(long)]
    pub external_host: Option<String>,
}

/// `klantbeeld executor`: the flags of Ballista's `ballista-executor` that apply.
#[derive(Debug, Clone, clap::Args)]
pub struct ExecutorArgs {
    /// Scheduler host.
    #[arg(long, default_value = "localhost")]
    pub scheduler_host: String,
    /// Scheduler port.
    #[arg(long, default_value_t = 50050)]
    pub scheduler_port: u16,
    /// Local address to bind to.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind_host: String,
    /// Host name the scheduler and the other executors reach this one at.
    #[arg(long)]
    pub external_host: Option<String>,
    /// Port of the Arrow Flight service that serves shuffle data and results.
    #[arg(long, short = 'p', default_value_t = 50051)]
    pub bind_port: u16,
    /// Port of the gRPC service the scheduler sends tasks to.
    #[arg(long, alias = "grpc-port", default_value_t = 50052)]
    pub bind_grpc_port: u16,
    /// Tasks run at the same time (default: the machine's cores).
    #[arg(long = "concurrent-tasks")]
    pub concurrent_tasks: Option<usize>,
    /// Folder for shuffle files and spills (default: a temporary folder).
    #[arg(long)]
    pub work_dir: Option<String>,
    /// Memory the executor's tasks may use before spilling, e.g. 4GB (default: Ballista's
    /// share of the machine's memory).
    #[arg(long, value_name = "SIZE")]
    pub memory_pool_size: Option<crate::config::ByteSize>,
    /// How long to keep trying to reach the scheduler at start, in seconds (0: once).
    #[arg(long, default_value_t = 30)]
    pub scheduler_connect_timeout_seconds: u16,
}

/// Object stores made when a query first names their bucket, from the standard
/// environment variables (as `storage::build_store` does for a run): executors learn
/// their inputs' locations from the plans they receive, not from a pipeline file.
#[derive(Debug, Default)]
struct StoresOnDemand {
    known: DefaultObjectStoreRegistry,
}

impl ObjectStoreRegistry for StoresOnDemand {
    fn register_store(&self, url: &Url, store: Arc<dyn ObjectStore>) -> Option<Arc<dyn ObjectStore>> {
        self.known.register_store(url, store)
    }

    fn deregister_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        self.known.deregister_store(url)
    }

    fn get_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        if let Ok(store) = self.known.get_store(url) {
            return Ok(store);
        }
        let location = Location::parse(url.as_str(), std::path::Path::new("/"))
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        if location.kind == StoreKind::Local {
            return self.known.get_store(url);
        }
        let store =
            build_store(&location, &StorageSpec::default()).map_err(|e| DataFusionError::External(Box::new(e)))?;
        self.known.register_store(url, store.clone());
        Ok(store)
    }
}

fn runtime(work_dir: Option<&str>) -> Result<Arc<RuntimeEnv>> {
    let mut builder = RuntimeEnvBuilder::new().with_object_store_registry(Arc::new(StoresOnDemand::default()));
    if let Some(dir) = work_dir {
        builder = builder.with_temp_file_path(dir);
    }
    builder.build_arc()
}

/// The state the scheduler plans with: Ballista's functions and klantbeeld's.
fn scheduler_state(config: SessionConfig) -> Result<SessionState> {
    let mut state = SessionStateBuilder::new()
        .with_runtime_env(runtime(None)?)
        .with_config(config)
        .with_default_features()
        .with_scalar_functions(ballista_core::extension::ballista_scalar_functions())
        .with_aggregate_functions(ballista_core::extension::ballista_aggregate_functions())
        .with_window_functions(ballista_core::extension::ballista_window_functions())
        .build();
    for udf in crate::udf::all() {
        datafusion::execution::FunctionRegistry::register_udf(&mut state, Arc::new(udf))?;
    }
    Ok(state)
}

/// The functions executors resolve plans' calls with.
fn executor_functions() -> BallistaFunctionRegistry {
    let mut registry = BallistaFunctionRegistry::default();
    for udf in crate::udf::all() {
        registry.scalar_functions.insert(udf.name().to_string(), Arc::new(udf));
    }
    registry
}

fn bind_address(role: &'static str, host: &str, port: u16) -> Result<std::net::SocketAddr, DistributedError> {
    let address = format!("{host}:{port}");
    address.parse().map_err(|source| DistributedError::Address { role, address, source })
}

/// Runs a scheduler until the process is stopped.
pub async fn run_scheduler(args: &SchedulerArgs) -> Result<(), DistributedError> {
    let ballista = |source| DistributedError::Ballista { role: "scheduler", source };
    let address = bind_address("scheduler", &args.bind_host, args.bind_port)?;
    let config = SchedulerConfig {
        bind_host: args.bind_host.clone(),
        bind_port: args.bind_port,
        external_host: args.external_host.clone().unwrap_or_else(|| args.bind_host.clone()),
        override_session_builder: Some(Arc::new(scheduler_state)),
        ..Default::default()
    };
    let cluster = BallistaCluster::new_from_config(&config).await.map_err(ballista)?;
    start_server(cluster, address, Arc::new(config)).await.map_err(ballista)
}

/// Runs an executor until the process is stopped.
pub async fn run_executor(args: &ExecutorArgs) -> Result<(), DistributedError> {
    bind_address("executor", &args.bind_host, args.bind_port)?;
    let work_dir = args.work_dir.clone();
    let defaults = ExecutorProcessConfig::default();
    let config = ExecutorProcessConfig {
        bind_host: args.bind_host.clone(),
        external_host: args.external_host.clone(),
        port: args.bind_port,
        grpc_port: args.bind_grpc_port,
        scheduler_host: args.scheduler_host.clone(),
        scheduler_port: args.scheduler_port,
        scheduler_connect_timeout_seconds: args.scheduler_connect_timeout_seconds,
        vcores: args.concurrent_tasks.unwrap_or(0),
        work_dir: work_dir.clone(),
        memory_pool_size: args.memory_pool_size.map(|b| b.0 as u64),
        override_function_registry: Some(Arc::new(executor_functions())),
        override_runtime_producer: Some(Arc::new(move |_: &SessionConfig| runtime(work_dir.as_deref()))),
        ..defaults
    };
    start_executor_process(Arc::new(config))
        .await
        .map_err(|source| DistributedError::Ballista { role: "executor", source })
}

/// A session whose queries run on the Ballista cluster at `url` (`df://HOST:PORT`), with
/// klantbeeld's functions, the way `engine::session` makes an embedded one.
pub async fn connect(url: &str, config: SessionConfig) -> Result<SessionContext, DistributedError> {
    let error = |source| DistributedError::Connect { url: url.to_string(), source };
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime(None).map_err(error)?)
        .with_default_features()
        .build();
    let ctx = SessionContext::remote_with_state(url, state).await.map_err(error)?;
    // Ballista rebuilds the client's function list from its own: ours go on top.
    crate::udf::register(&ctx);
    Ok(ctx)
}

/// Whether the session's queries run on a Ballista cluster.
pub fn is_distributed(ctx: &SessionContext) -> bool {
    ctx.state().config().options().extensions.get::<ballista_core::config::BallistaConfig>().is_some()
}

/// A session configuration with Ballista's settings, for [`connect`].
pub fn client_config() -> SessionConfig {
    // Measured with Ballista 55 on the retail pipeline: the adaptive planner re-planned one
    // model (a cross join with a one-row aggregate) without end, over 100,000 stages for a
    // job of seconds; the static planner's sort-merge joins lost a join filter's column
    // ("Column 'rid' is declared as non-nullable but contains null values"); a hash join
    // that collects its small side (`CollectLeft`) for an outer join returned only the
    // matched rows (the CLV model kept 70 of 1,110 customers). So: static planner, hash
    // joins, always partitioned.
    SessionConfig::new_with_ballista()
        .with_information_schema(true)
        .with_ballista_adaptive_query_planner(false)
        .set_bool("datafusion.optimizer.prefer_hash_join", true)
        .set_u64("datafusion.optimizer.hash_join_single_partition_threshold", 0)
        .set_u64("datafusion.optimizer.hash_join_single_partition_threshold_rows", 0)
}
