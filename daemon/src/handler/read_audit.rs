//! `tokenctl audit`: the audit trail as a peer may read it. Admins read
//! all of it; anyone else only the entries about the credentials it owns
//! now, by incarnation: not those of an earlier credential of the same
//! name, nor the `not_found` requests for the name (docs/SECURITY.md, "The
//! audit trail").

use super::known;
use crate::config::access::Peer;
use crate::error::Error;
use crate::state::Shared;
use crate::store::audit::{AuditFilter, UserFilter};
use std::sync::Arc;
use tokend_proto::{AuditQuery, Response};

/// Answers `query` for `peer`, after writing what is still queued (so that
/// a request made a moment ago is in the answer).
pub(super) async fn read(
    shared: &Arc<Shared>,
    peer: &Peer,
    query: &AuditQuery,
) -> Result<Response, Error> {
    let (credentials, incarnations) = readable(shared, peer, query.credential.as_deref()).await?;
    let filter = AuditFilter {
        credentials,
        incarnations,
        since_ms: query.since.map(|s| s.saturating_mul(1000)),
        user: query.user.as_deref().map(UserFilter::parse),
        limit: query.limit,
    };
    let writer = shared.clone();
    let store = shared.store.clone();
    let entries = crate::store::blocking(move || {
        if let Err(e) = writer.audit.write_queued(&writer.store) {
            tracing::warn!(error = %e, "could not write the audit trail's queued entries; will retry");
        }
        store.read_audit(&filter)
    })
    .await?;
    Ok(Response::Audit(entries))
}

/// The names and incarnations of the credentials whose entries `peer` may
/// read (`None`: all, for an admin; naming a credential, all its
/// incarnations), narrowed to `asked` if it named one. A user who is not
/// an admin reads only the credentials it owns now, as they are now.
async fn readable(
    shared: &Shared,
    peer: &Peer,
    asked: Option<&str>,
) -> Result<(Option<Vec<String>>, Option<Vec<i64>>), Error> {
    let admin = shared.policy().is_admin(peer);
    if admin.granted(peer, &shared.groups).await {
        return Ok((asked.map(|name| vec![name.to_string()]), None));
    }
    let Some(name) = asked else {
        let (names, incarnations) = shared
            .registry
            .all()
            .iter()
            .filter(|c| c.owner_uid == peer.uid)
            .map(|c| (c.name.to_string(), c.incarnation))
            .unzip();
        return Ok((Some(names), Some(incarnations)));
    };
    let cred = known(shared, name)?;
    if cred.owner_uid != peer.uid {
        return Err(Error::PermissionDenied(format!(
            "{} may not read the audit trail of credential {name:?} (its owner and admins may)",
            peer.who()
        )));
    }
    Ok((Some(vec![name.to_string()]), Some(vec![cred.incarnation])))
}
