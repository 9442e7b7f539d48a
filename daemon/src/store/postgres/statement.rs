//! Statements with owned parameters, built on a daemon thread and run on
//! the store's own (`thread.rs`).

use std::sync::Arc;
use tokio_postgres::types::ToSql;

/// A statement with owned parameters, to run on the store's runtime.
#[derive(Clone)]
pub(super) struct Sql {
    pub text: String,
    params: Arc<Vec<Box<dyn ToSql + Sync + Send>>>,
}

impl Sql {
    pub fn new(text: impl Into<String>, params: Vec<Box<dyn ToSql + Sync + Send>>) -> Sql {
        Sql {
            text: text.into(),
            params: Arc::new(params),
        }
    }

    pub async fn run(
        &self,
        client: &impl tokio_postgres::GenericClient,
    ) -> Result<u64, tokio_postgres::Error> {
        client.execute(self.text.as_str(), &self.params()).await
    }

    /// Runs it as `statement`, prepared from its text beforehand.
    pub async fn run_prepared(
        &self,
        client: &impl tokio_postgres::GenericClient,
        statement: &tokio_postgres::Statement,
    ) -> Result<u64, tokio_postgres::Error> {
        client.execute(statement, &self.params()).await
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

/// A parameter of a [`Sql`].
pub(super) fn boxed<T: ToSql + Sync + Send + 'static>(v: T) -> Box<dyn ToSql + Sync + Send> {
    Box::new(v)
}
