//! The error of a klantbeeld command: each stage's error, grouped by what the user has
//! to do about it, which decides the exit code.

use crate::{check, config, distributed, enrich, extract, golden, publish, resolve, stage, storage};

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

/// What the user has to do about an error; each stage's error says which of these it is,
/// and the class decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitClass {
    /// Fix the pipeline definition (YAML, SQL, a variable, a location's syntax).
    Config,
    /// Fix or re-export the input dumps.
    Input,
    /// The data broke a data test; nothing was published.
    DataTest,
    /// Anything else: the machine, the storage, the engine.
    Other,
}

impl ExitClass {
    pub fn code(self) -> i32 {
        match self {
            ExitClass::Config => exit::CONFIG,
            ExitClass::Input => exit::INPUT,
            ExitClass::DataTest => exit::DATA_TEST,
            ExitClass::Other => exit::OTHER,
        }
    }
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
        if self.is_out_of_memory() {
            // A matter of the memory limit, whatever stage ran out.
            return exit::OTHER;
        }
        match self {
            Error::Config(_) | Error::Usage(_) => ExitClass::Config,
            Error::Extract(e) => e.exit_class(),
            Error::Stage(e) => e.exit_class(),
            Error::Resolve(e) => e.exit_class(),
            Error::Golden(e) => e.exit_class(),
            Error::Enrich(e) => e.exit_class(),
            Error::Check(e) => e.exit_class(),
            Error::DataTests(_) => ExitClass::DataTest,
            Error::Publish(e) => e.exit_class(),
            Error::Storage(e) => e.exit_class(),
            Error::Distributed(e) => e.exit_class(),
            Error::Engine { .. } | Error::Other(_) => ExitClass::Other,
        }
        .code()
    }

    pub fn engine(context: impl Into<String>) -> impl FnOnce(datafusion::error::DataFusionError) -> Error {
        let context = context.into();
        move |source| Error::Engine { context, source }
    }
}
