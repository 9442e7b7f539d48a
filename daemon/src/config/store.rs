//! Which store the daemon uses: `--store`, the config's `store`, or the
//! SQLite default (docs/CONFIG.md, "store").

use std::path::PathBuf;

/// Where credentials are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// One host: an SQLite file.
    Sqlite(PathBuf),
    /// A fleet: a PostgreSQL database, by libpq-style URL (never with a password).
    Postgres(String),
}

/// Why a store URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    #[error(
        "{0:?} is not a store URL: use sqlite:PATH or postgresql://USER@HOST/DBNAME (e.g. postgresql://tokend@/tokend?host=/run/postgresql)"
    )]
    Unknown(String),
    #[error("sqlite: needs a path (sqlite:/var/lib/tokend/tokend.db)")]
    EmptyPath,
    #[error(
        "the store URL holds a password, which would show in the process list and the logs; remove it and name a file holding it with store_password_file (docs/CONFIG.md)"
    )]
    Password,
}

impl StoreLocation {
    /// Parses `sqlite:PATH` or a `postgresql://` / `postgres://` URL.
    pub fn parse(url: &str) -> Result<StoreLocation, LocationError> {
        let url = url.trim();
        if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(LocationError::EmptyPath);
            }
            return Ok(StoreLocation::Sqlite(PathBuf::from(path)));
        }
        let Some(rest) = url
            .strip_prefix("postgresql://")
            .or_else(|| url.strip_prefix("postgres://"))
        else {
            return Err(LocationError::Unknown(url.to_string()));
        };
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        let user_info = authority.rsplit_once('@').map(|(u, _)| u);
        if user_info.is_some_and(|u| u.contains(':')) || has_password_param(rest) {
            return Err(LocationError::Password);
        }
        Ok(StoreLocation::Postgres(url.to_string()))
    }

    /// The store for the command line's `--store` and `--db`, the config's
    /// `store`, and the default SQLite path, in that order.
    pub fn resolve(
        flag: Option<&str>,
        db_flag: Option<&PathBuf>,
        config: Option<&str>,
        default_db: &std::path::Path,
    ) -> Result<StoreLocation, String> {
        match (flag, db_flag) {
            (Some(_), Some(_)) => Err(
                "--store and --db both name a store; give one (--db PATH is --store sqlite:PATH)"
                    .into(),
            ),
            (Some(url), None) => StoreLocation::parse(url).map_err(|e| format!("--store: {e}")),
            (None, Some(db)) => Ok(StoreLocation::Sqlite(db.clone())),
            (None, None) => match config {
                Some(url) => StoreLocation::parse(url).map_err(|e| format!("config: store: {e}")),
                None => Ok(StoreLocation::Sqlite(default_db.to_path_buf())),
            },
        }
    }
}

fn has_password_param(rest: &str) -> bool {
    rest.split_once('?').is_some_and(|(_, query)| {
        query
            .split('&')
            .any(|kv| kv.split('=').next() == Some("password"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_are_read_or_refused_with_the_reason() {
        assert_eq!(
            StoreLocation::parse("sqlite:/var/lib/tokend/t.db"),
            Ok(StoreLocation::Sqlite("/var/lib/tokend/t.db".into()))
        );
        let pg = "postgresql://tokend@/tokend?host=/run/postgresql";
        assert_eq!(
            StoreLocation::parse(pg),
            Ok(StoreLocation::Postgres(pg.into()))
        );
        assert!(StoreLocation::parse("postgres://db.internal/tokend").is_ok());
        assert_eq!(
            StoreLocation::parse("postgresql://u:hunter2@db/tokend"),
            Err(LocationError::Password)
        );
        assert_eq!(
            StoreLocation::parse("postgresql://u@db/tokend?password=x"),
            Err(LocationError::Password)
        );
        assert!(matches!(
            StoreLocation::parse("mysql://x"),
            Err(LocationError::Unknown(_))
        ));
        assert_eq!(
            StoreLocation::parse("sqlite:"),
            Err(LocationError::EmptyPath)
        );
    }

    #[test]
    fn the_command_line_wins_and_two_stores_are_refused() {
        let default = std::path::Path::new("/d/tokend.db");
        let db = PathBuf::from("/x.db");
        assert!(StoreLocation::resolve(Some("sqlite:/a"), Some(&db), None, default).is_err());
        assert_eq!(
            StoreLocation::resolve(None, Some(&db), Some("postgresql://u@/t"), default),
            Ok(StoreLocation::Sqlite(db.clone()))
        );
        assert_eq!(
            StoreLocation::resolve(None, None, Some("postgresql://u@/t"), default),
            Ok(StoreLocation::Postgres("postgresql://u@/t".into()))
        );
        assert_eq!(
            StoreLocation::resolve(None, None, None, default),
            Ok(StoreLocation::Sqlite(default.into()))
        );
    }
}
