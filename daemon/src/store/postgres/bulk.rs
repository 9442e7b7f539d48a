//! Many rows at once: reading (and opening) credentials as they stream
//! in, and inserting many in one pipelined transaction.

use super::statement::{Sql, boxed};
use super::{CALL_LIMIT, PIPELINE, PgStore, row, schema};
use crate::store::names::Names;
use crate::store::rows::{keep_valid_names, open_all, seal_row};
use crate::store::{StoreError, StoredCredential};
use std::collections::HashMap;
use std::time::Duration;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

impl PgStore {
    /// Reads rows (`filter` after the FROM clause) and opens their secrets.
    pub(super) fn read(
        &self,
        filter: &'static str,
        names: Option<Vec<String>>,
    ) -> Result<Vec<StoredCredential>, StoreError> {
        let pool = self.work.clone();
        // A whole store streams in one statement: more time than one call.
        let limit = if names.is_none() {
            6 * CALL_LIMIT
        } else {
            CALL_LIMIT
        };
        let mut loaded = self.call_within(limit, async move {
            use futures_util::TryStreamExt;
            let client = pool.get().await?;
            let sql = format!("SELECT {} FROM {} {filter}", schema::COLUMNS, schema::FROM);
            let params: Vec<&(dyn ToSql + Sync)> = match &names {
                Some(names) => vec![names],
                None => vec![],
            };
            let mut rows = std::pin::pin!(client.query_raw(&sql, params).await?);
            let mut loaded = row::Loaded::default();
            while let Some(r) = rows.try_next().await? {
                loaded.push(&r)?;
            }
            Ok(loaded)
        })?;
        open_all(&self.sealer, &mut loaded.creds, &loaded.sealed);
        keep_valid_names(&mut loaded.creds);
        Ok(loaded.creds)
    }

    /// Inserts rows in one transaction; `replace` removes a row of the
    /// same name first.
    pub(super) fn insert_rows(
        &self,
        creds: &[StoredCredential],
        replace: bool,
    ) -> Result<(), StoreError> {
        self.refuse_check()?;
        let mut statements = Vec::with_capacity(creds.len() * 2);
        let mut names = Names::default();
        for c in creds {
            let sealed = seal_row(&self.sealer, c, &mut names)?;
            if replace {
                statements.push(Sql::new(
                    "DELETE FROM tokend.credentials WHERE name = $1",
                    vec![boxed(c.name.clone())],
                ));
            }
            statements.push(row::insert(c, sealed));
        }
        let pool = self.work.clone();
        let first_name = creds.first().map(|c| c.name.clone()).unwrap_or_default();
        // A bulk import is many statements in one call: 2 ms more per row.
        let limit = CALL_LIMIT + Duration::from_millis(2 * creds.len() as u64);
        self.call_within(limit, async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            let mut prepared = HashMap::new();
            for sql in &statements {
                if !prepared.contains_key(&sql.text) {
                    prepared.insert(sql.text.clone(), tx.prepare(&sql.text).await?);
                }
            }
            // Pipelined: a batch's statements are sent without waiting for
            // each answer (they still run in order), a bulk import's round
            // trips shared.
            for batch in statements.chunks(PIPELINE) {
                let runs = batch
                    .iter()
                    .map(|sql| sql.run_prepared(&*tx, &prepared[&sql.text]));
                for result in futures_util::future::join_all(runs).await {
                    match result {
                        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                            let name = row::duplicate_name(&e).unwrap_or(first_name);
                            return Err(StoreError::AlreadyExists(name).into());
                        }
                        other => other?,
                    };
                }
            }
            Ok(tx.commit().await?)
        })
    }
}
