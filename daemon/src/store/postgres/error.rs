//! What can go wrong on the database's side, and how it reads at the edge:
//! a store error naming the database, with the server's own message.

use crate::store::StoreError;
use std::sync::Arc;

/// A failure inside one of the store's database tasks; `?` works on each
/// kind, and [`Db::error`] turns it into a [`StoreError`] once, at the end.
pub(super) enum Failure {
    Pg(tokio_postgres::Error),
    Pool(deadpool_postgres::PoolError),
    Store(StoreError),
    /// The database did not answer in time; the text says how long.
    Stalled(String),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        Failure::Pg(e)
    }
}

impl From<deadpool_postgres::PoolError> for Failure {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Failure::Pool(e)
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

/// The database as named in errors (its URL, which never holds a password).
#[derive(Clone)]
pub(super) struct Db(pub Arc<str>);

impl Db {
    pub fn error(&self, f: Failure) -> StoreError {
        match f {
            Failure::Pg(e) => {
                StoreError::Database(format!("PostgreSQL {}: {}", self.0, describe(&e)))
            }
            Failure::Pool(e) => {
                let detail = match &e {
                    deadpool_postgres::PoolError::Backend(e) => describe(e),
                    other => other.to_string(),
                };
                StoreError::Database(format!("PostgreSQL {}: cannot connect: {detail}", self.0))
            }
            Failure::Store(e) => e,
            Failure::Stalled(why) => StoreError::Database(format!("PostgreSQL {why}")),
        }
    }
}

/// A database error as a sentence: the server's own message when it sent
/// one (tokio-postgres shows only "db error"), why TLS failed when it did,
/// else the cause.
pub(super) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    if let Some(why) = super::tls::explain(e) {
        return why;
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}
