//! klantbeeld: builds a golden customer table from the dumps of a company's source systems.
//!
//! The stages of a run, one module each: [`config`] -> [`extract`] -> [`stage`] ->
//! [`resolve`] -> [`golden`] -> [`publish`]; [`pipeline`] runs them in order and [`cli`]
//! is the command line.

pub mod check;
pub mod cli;
pub mod config;
pub mod demo;
pub mod distributed;
pub mod engine;
pub mod enrich;
pub mod eval;
pub mod explain;
pub mod extract;
pub mod golden;
pub mod manifest;
pub mod pipeline;
pub mod progress;
pub mod publish;
pub mod resolve;
pub mod stage;
pub mod storage;
pub mod udf;

/// Any error of a klantbeeld command, grouped by what the user has to do about it. The
/// group decides the exit code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pipeline definition is wrong (YAML, SQL, a variable, a location's syntax).
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Extract(#[from] extract::ExtractError),
    #[error(transparent)]
    Stage(#[from] stage::StageError),
    #[error(transparent)]
    Resolve(#[from] resolve::ResolveError),
    #[error(transparent)]
    Golden(#[from] golden::GoldenError),
    #[error(transparent)]
    Enrich(#[from] enrich::EnrichError),
    #[error(transparent)]
    Check(#[from] check::CheckError),
    /// Data tests failed; nothing was published.
    #[error("{} of {} data tests failed ({}); nothing was published", .0.iter().filter(|o| !o.passed).count(), .0.len(), failed_names(.0))]
    DataTests(Vec<check::TestOutcome>),
    #[error(transparent)]
    Publish(#[from] publish::PublishError),
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
    #[error(transparent)]
    Distributed(#[from] distributed::DistributedError),
    #[error("{0}")]
    Usage(String),
    #[error("{context}: {source}")]
    Engine { context: String, source: datafusion::error::DataFusionError },
    #[error("{0}")]
    Other(String),
}

fn failed_names(outcomes: &[check::TestOutcome]) -> String {
    let names: Vec<String> =
        outcomes.iter().filter(|o| !o.passed).map(|o| format!("{}: {}", o.table, o.test)).collect();
    names.join("; ")
}

/// Exit codes, as documented in the README.
pub mod exit {
    pub const OK: i32 = 0;
    pub const OTHER: i32 = 1;
    pub const CONFIG: i32 = 2;
    pub const INPUT: i32 = 3;
    pub const DATA_TEST: i32 = 4;
}

impl Error {
    /// Whether the run stopped because the engine's memory pool was exhausted: a matter of
    /// the memory limit, not of the configuration or the input.
    pub fn is_out_of_memory(&self) -> bool {
        use datafusion::error::DataFusionError as D;
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = source {
            if let Some(D::ResourcesExhausted(_)) = e.downcast_ref::<D>().map(D::find_root) {
                return true;
            }
            source = e.source();
        }
        false
    }

    /// Whether the run stopped on input the engine could not decode (a corrupt page).
    pub fn is_decoding(&self) -> bool {
        use datafusion::error::DataFusionError as D;
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = source {
            if e.downcast_ref::<datafusion::parquet::errors::ParquetError>().is_some()
                || e.downcast_ref::<D>()
                    .is_some_and(|d| matches!(d.find_root(), D::ParquetError(_) | D::ArrowError(..)))
            {
                return true;
            }
            source = e.source();
        }
        false
    }

    pub fn exit_code(&self) -> i32 {
        use extract::ExtractError as E;
        if self.is_out_of_memory() {
            return exit::OTHER;
        }
        match self {
            Error::Config(_) | Error::Usage(_) | Error::Golden(golden::GoldenError::UnknownAttribute { .. }) => {
                exit::CONFIG
            }
            Error::Enrich(_) | Error::Check(_) => exit::CONFIG,
            Error::DataTests(_) => exit::DATA_TEST,
            Error::Stage(stage::StageError::Mapping { .. }) => exit::CONFIG,
            Error::Resolve(resolve::ResolveError::Rule { .. } | resolve::ResolveError::Model { .. }) => exit::CONFIG,
            Error::Storage(storage::StorageError::BadLocation { .. }) => exit::CONFIG,
            Error::Distributed(distributed::DistributedError::Address { .. }) => exit::CONFIG,
            Error::Publish(publish::PublishError::NotOurs { .. }) => exit::CONFIG,
            Error::Extract(E::Storage(storage::StorageError::BadLocation { .. })) => exit::CONFIG,
            Error::Extract(E::Scratch { .. } | E::Engine { .. }) => exit::OTHER,
            Error::Extract(_) => exit::INPUT,
            _ => exit::OTHER,
        }
    }

    pub fn engine(context: impl Into<String>) -> impl FnOnce(datafusion::error::DataFusionError) -> Error {
        let context = context.into();
        move |source| Error::Engine { context, source }
    }
}
