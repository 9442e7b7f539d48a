//! What a peer who is not an admin is not told: where the database is. A
//! fleet's store URL names hosts, ports, users and databases, and a
//! database's errors come with it ("PostgreSQL postgresql://… is
//! unreachable"); they reach a credential's reason and the errors of
//! `token`, `refresh`, `show` and `status` while the database is down.
//! For such a peer the URL becomes "the database"; the log and an admin
//! keep the details (docs/SECURITY.md, "What a user is told").

use crate::config::access::Peer;
use crate::state::Shared;
use tokend_proto::{CredentialInfo, Response};

/// `response`, the database's name taken out of it unless `peer` is an admin.
/// A token answer (the hot path) has no text: it costs one match.
pub async fn for_peer(shared: &Shared, peer: &Peer, mut response: Response) -> Response {
    let mut texts = texts(&mut response);
    if texts.is_empty() {
        return response;
    }
    let Some(db) = shared.store.name_in_errors() else {
        return response;
    };
    if !texts.iter().any(|t| t.contains(db.as_str())) {
        return response;
    }
    if super::is_admin(shared, peer).await {
        return response;
    }
    for text in texts.iter_mut() {
        **text = text.replace(db.as_str(), "the database");
    }
    response
}

/// Every text of `response` that may quote a database error.
fn texts(response: &mut Response) -> Vec<&mut String> {
    match response {
        Response::Error(e) => vec![&mut e.message],
        Response::Message(m) => vec![m],
        Response::Credential(info) => info_texts(info),
        Response::List(infos) => infos.iter_mut().flat_map(info_texts).collect(),
        Response::Status(status) => status
            .credentials
            .iter_mut()
            .filter_map(|c| c.reason.as_mut())
            .collect(),
        _ => Vec::new(),
    }
}

fn info_texts(info: &mut CredentialInfo) -> Vec<&mut String> {
    [info.reason.as_mut(), info.last_error.as_mut()]
        .into_iter()
        .flatten()
        .collect()
}
