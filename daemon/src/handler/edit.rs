//! `tokenctl edit NAME`: changes a credential's non-secret settings in
//! place — the description, the proxy's upstream, a bearer token's check
//! URL, an app's scopes, the git hosts — without its secrets, its grant or
//! its tokens being touched. The endpoints and the client a refresh uses
//! cannot be edited: changing those is a new credential (`add --replace`),
//! so no refresh token is ever sent to an endpoint it was not issued by.

use super::admin::wait_for_refresh;
use super::known;
use crate::error::Error;
use crate::provider::http::validate_endpoint_url;
use crate::state::Shared;
use crate::store::blocking;
use std::sync::Arc;
use tokend_proto::{CredentialSpec, EditCredential, Response};

/// Applies `edit`: checked like `add` checks the same flags, written to
/// the store with a new tag, then held here (other members of a fleet
/// take it from the store's notification).
pub(super) async fn edit_credential(
    shared: &Arc<Shared>,
    edit: EditCredential,
) -> Result<Response, Error> {
    let cred = known(shared, &edit.name)?;
    crate::token::trusted(&cred)?;
    // One change at a time per credential, and none while a refresh of it
    // runs here, so what is held is what was written last.
    let Some(_refresh) = wait_for_refresh(shared, &cred).await else {
        return Err(Error::Busy(format!(
            "credential {:?} is busy with a refresh; nothing was changed (try again)",
            edit.name
        )));
    };
    let (description, spec) = cred.with_live(|l| (l.description.to_string(), l.spec.clone()));
    let (description, spec, changed) = edited(description, spec, edit)?;
    if changed.is_empty() {
        return Err(Error::InvalidArgument(
            "nothing to change: give at least one of --description, --api-url, --retry-on, --check-url, --scope, --git-host, --warn-before".into(),
        ));
    }
    let store = shared.store.clone();
    let (name, incarnation) = (cred.name.to_string(), cred.incarnation);
    let (to_store, desc) = (spec.clone(), description.clone());
    blocking(move || store.change_settings(&name, incarnation, &desc, &to_store)).await?;
    cred.with_live(|l| {
        l.spec = spec;
        l.description = description.into();
    });
    // A new warning moves the `expiring` notification with it.
    crate::token::forecast::watch_warning(shared, &cred);
    tracing::info!(credential = %cred.name, changed = %changed.join(", "), "credential edited");
    Ok(Response::Message(format!(
        "edited credential {:?}: {}",
        cred.name,
        changed.join(", ")
    )))
}

/// The description and settings with `edit` applied, each checked, and
/// the names of what changed.
fn edited(
    mut description: String,
    spec: CredentialSpec,
    edit: EditCredential,
) -> Result<(String, CredentialSpec, Vec<&'static str>), Error> {
    let mut changed = Vec::new();
    if let Some(d) = edit.description {
        super::add::check_description(&d)?;
        description = d;
        changed.push("description");
    }
    let mut spec = spec;
    if let Some(url) = edit.check_url {
        set_check_url(&mut spec, url)?;
        changed.push("check URL");
    }
    if let Some(scopes) = edit.scopes {
        set_scopes(&mut spec, scopes)?;
        changed.push("scopes");
    }
    if let Some(hosts) = edit.git_hosts {
        spec = super::git_hosts::with_git_hosts(spec, hosts)?;
        changed.push("git hosts");
    }
    if let Some(secs) = edit.warn_before_secs {
        let Some(warn) = spec.warn_before_mut() else {
            return Err(Error::InvalidArgument(format!(
                "--warn-before is for oauth2 and client-credentials apps (a refresh token's expiry); this one is {}",
                spec.kind()
            )));
        };
        *warn = secs;
        changed.push("warning before the refresh token expires");
    }
    if edit.api_url.is_some() || edit.retry_on.is_some() {
        let mut upstream = spec.upstream().cloned().unwrap_or_default();
        if let Some(url) = edit.api_url {
            upstream.api_url = url;
            changed.push("API URL");
        }
        if let Some(statuses) = edit.retry_on {
            upstream.retry_on = statuses;
            changed.push("retry statuses");
        }
        *spec.upstream_mut() = None;
        spec = super::upstream::with_upstream(spec, upstream)?;
    }
    Ok((description, spec, changed))
}

/// A bearer token's check URL; the other kinds have none.
fn set_check_url(spec: &mut CredentialSpec, url: Option<String>) -> Result<(), Error> {
    let CredentialSpec::Bearer { check_url, .. } = spec else {
        return Err(Error::InvalidArgument(format!(
            "--check-url is for bearer credentials; this one is {}",
            spec.kind()
        )));
    };
    if let Some(url) = &url {
        validate_endpoint_url(url, "the check URL")?;
    }
    *check_url = url.map(Into::into);
    Ok(())
}

/// An app's scopes; a bearer token has none.
fn set_scopes(spec: &mut CredentialSpec, scopes: Vec<String>) -> Result<(), Error> {
    if let Some(bad) = scopes
        .iter()
        .find(|s| s.is_empty() || s.contains(|c: char| c.is_whitespace() || c.is_control()))
    {
        return Err(Error::InvalidArgument(format!(
            "scope {bad:?} is not a scope: one word per --scope"
        )));
    }
    match spec {
        CredentialSpec::OAuth2(s) => s.scopes = scopes,
        CredentialSpec::ClientCredentials(s) => s.scopes = scopes,
        CredentialSpec::Bearer { .. } => {
            return Err(Error::InvalidArgument(
                "--scope is for oauth2 and client-credentials credentials; a bearer token has no scopes".into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer() -> CredentialSpec {
        CredentialSpec::Bearer {
            check_url: Some("https://api.example.com/me".into()),
            git_hosts: Vec::new(),
            upstream: None,
        }
    }

    fn edit() -> EditCredential {
        EditCredential {
            name: "a".into(),
            ..EditCredential::default()
        }
    }

    #[test]
    fn only_what_is_given_changes() {
        let e = EditCredential {
            api_url: Some(Some("https://api.example.com/v1/".into())),
            ..edit()
        };
        let (description, spec, changed) = edited("sync".into(), bearer(), e).unwrap();
        assert_eq!(description, "sync");
        assert_eq!(changed, ["API URL"]);
        let CredentialSpec::Bearer { check_url, .. } = &spec else {
            unreachable!()
        };
        assert_eq!(check_url.as_deref(), Some("https://api.example.com/me"));
        let upstream = spec.upstream().unwrap();
        assert_eq!(
            upstream.api_url.as_deref(),
            Some("https://api.example.com/v1/")
        );
        assert_eq!(upstream.retry_on(), [401, 403]);
    }

    #[test]
    fn retry_statuses_keep_the_api_url_and_taking_both_away_leaves_no_upstream() {
        let (_, spec, _) = edited(
            String::new(),
            bearer(),
            EditCredential {
                api_url: Some(Some("https://api.example.com/".into())),
                ..edit()
            },
        )
        .unwrap();
        let (_, spec, _) = edited(
            String::new(),
            spec,
            EditCredential {
                retry_on: Some(Some(vec![403])),
                ..edit()
            },
        )
        .unwrap();
        let upstream = spec.upstream().unwrap();
        assert_eq!(
            upstream.api_url.as_deref(),
            Some("https://api.example.com/")
        );
        assert_eq!(upstream.retry_on(), [403]);
        let (_, spec, _) = edited(
            String::new(),
            spec,
            EditCredential {
                api_url: Some(None),
                retry_on: Some(None),
                ..edit()
            },
        )
        .unwrap();
        assert!(spec.upstream().is_none());
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_named() {
        let cleartext = EditCredential {
            api_url: Some(Some("http://api.example.com/".into())),
            ..edit()
        };
        assert!(edited(String::new(), bearer(), cleartext).is_err());
        let scopes = EditCredential {
            scopes: Some(vec!["read".into()]),
            ..edit()
        };
        let e = edited(String::new(), bearer(), scopes).unwrap_err();
        assert!(e.to_string().contains("--scope"), "{e}");
        let multi_line = EditCredential {
            description: Some("a\nb".into()),
            ..edit()
        };
        assert!(edited(String::new(), bearer(), multi_line).is_err());
        let warn = EditCredential {
            warn_before_secs: Some(Some(60)),
            ..edit()
        };
        let e = edited(String::new(), bearer(), warn).unwrap_err();
        assert!(e.to_string().contains("--warn-before"), "{e}");
    }

    #[test]
    fn an_app_gets_its_own_warning_and_can_give_it_back() {
        let app =
            CredentialSpec::ClientCredentials(Box::new(tokend_proto::ClientCredentialsSpec {
                token_url: "https://idp.example.com/token".into(),
                client_id: "c".into(),
                scopes: Vec::new(),
                client_auth: tokend_proto::ClientAuth::Post,
                refresh_margin_secs: None,
                refresh_warn_before_secs: None,
                endpoints: Default::default(),
                git_hosts: Vec::new(),
                upstream: None,
            }));
        let set = EditCredential {
            warn_before_secs: Some(Some(86_400)),
            ..edit()
        };
        let (_, spec, changed) = edited(String::new(), app, set).unwrap();
        assert_eq!(spec.warn_before_secs(), Some(86_400));
        assert_eq!(changed, ["warning before the refresh token expires"]);
        let back = EditCredential {
            warn_before_secs: Some(None),
            ..edit()
        };
        let (_, spec, _) = edited(String::new(), spec, back).unwrap();
        assert_eq!(spec.warn_before_secs(), None);
    }
}
