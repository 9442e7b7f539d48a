//! Presets: named endpoint sets that `tokenctl add --preset` fills in.
//! Built-in ones for the services tokend was shaped by, plus the config's.

use crate::config::{Config, PresetConfig};
use std::collections::BTreeMap;

/// The UpPromote check URL: a cheap authenticated read.
pub const UPPROMOTE_CHECK_URL: &str = "https://aff-api.uppromote.com/api/v1/affiliates";

/// UpPromote's API base, which the proxy sends the credential's requests
/// to (`/v1/proxy/NAME/affiliates` is the check URL's endpoint).
pub const UPPROMOTE_API_URL: &str = "https://aff-api.uppromote.com/api/v1/";

/// The built-in OAuth2 presets.
fn builtin(name: &str) -> Option<PresetConfig> {
    let params = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    match name {
        "uptempo-cas" => Some(PresetConfig {
            auth_url: Some("https://cas.brandmaker.com/oauth2/auth".into()),
            token_url: Some("https://cas.brandmaker.com/api/v1.1/token".into()),
            extra_params: params(&[("response_mode", "query")]),
            ..Default::default()
        }),
        // A Keycloak realm: Keycloak's fixed endpoint layout, so adding a
        // credential needs no network (the realm's discovery document
        // lists the same URLs).
        "uptempo8" => {
            let realm = |path: &str| {
                Some(format!(
                    "https://{{domain}}/access/realms/{{tenant}}/protocol/openid-connect/{path}"
                ))
            };
            Some(PresetConfig {
                auth_url: realm("auth"),
                token_url: realm("token"),
                introspection_url: realm("token/introspect"),
                revocation_url: realm("revoke"),
                device_authorization_url: realm("auth/device"),
                extra_params: params(&[("response_mode", "query")]),
                ..Default::default()
            })
        }
        _ => None,
    }
}

/// Names of all presets, for error messages.
fn known(config: &Config) -> String {
    let mut names = vec!["uptempo-cas", "uptempo8", "uppromote (bearer)"];
    names.extend(config.presets.keys().map(String::as_str));
    names.join(", ")
}

/// Why a preset cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresetError {
    #[error("unknown preset {name:?}; known presets: {known}")]
    Unknown { name: String, known: String },
    #[error("unknown bearer preset {0:?}; the bearer preset is \"uppromote\"")]
    UnknownBearer(String),
    #[error("preset value {key}={value:?} must be a plain host or name")]
    BadValue { key: String, value: String },
    #[error("this preset needs --preset-var {0}=VALUE")]
    Missing(String),
}

/// Looks a preset up: the config's first (so a site can override), then built-ins.
pub fn lookup(config: &Config, name: &str) -> Result<PresetConfig, PresetError> {
    config
        .presets
        .get(name)
        .cloned()
        .or_else(|| builtin(name))
        .ok_or_else(|| PresetError::Unknown {
            name: name.into(),
            known: known(config),
        })
}

/// The check URL a bearer preset gives.
pub fn bearer_check_url(name: &str) -> Result<&'static str, PresetError> {
    bearer_preset(name).map(|(check, _)| check)
}

/// The API URL a bearer preset gives the proxy.
pub fn bearer_api_url(name: &str) -> Result<&'static str, PresetError> {
    bearer_preset(name).map(|(_, api)| api)
}

/// A bearer preset's check URL and API URL.
fn bearer_preset(name: &str) -> Result<(&'static str, &'static str), PresetError> {
    match name {
        "uppromote" => Ok((UPPROMOTE_CHECK_URL, UPPROMOTE_API_URL)),
        other => Err(PresetError::UnknownBearer(other.into())),
    }
}

/// Fills `{var}` placeholders; a placeholder left unfilled is an error.
pub fn fill(template: &str, vars: &[(String, String)]) -> Result<String, PresetError> {
    let mut out = template.to_string();
    for (key, value) in vars {
        if value.is_empty() || value.contains(['/', '?', '#', '@']) {
            return Err(PresetError::BadValue {
                key: key.clone(),
                value: value.clone(),
            });
        }
        out = out.replace(&format!("{{{key}}}"), value);
    }
    if let Some(start) = out.find('{') {
        let var = out[start + 1..].split('}').next().unwrap_or("");
        return Err(PresetError::Missing(var.into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptempo8_urls_are_built_from_domain_and_tenant() {
        let p = lookup(&Config::default(), "uptempo8").unwrap();
        let vars = vec![
            ("domain".to_string(), "acme.uptempo.io".to_string()),
            ("tenant".to_string(), "acme".to_string()),
        ];
        let filled = |t: &Option<String>| fill(t.as_deref().unwrap(), &vars).unwrap();
        let realm = "https://acme.uptempo.io/access/realms/acme/protocol/openid-connect";
        assert_eq!(filled(&p.auth_url), format!("{realm}/auth"));
        assert_eq!(filled(&p.token_url), format!("{realm}/token"));
        assert_eq!(
            filled(&p.introspection_url),
            format!("{realm}/token/introspect")
        );
        assert_eq!(filled(&p.revocation_url), format!("{realm}/revoke"));
        assert_eq!(
            filled(&p.device_authorization_url),
            format!("{realm}/auth/device")
        );
        assert_eq!(p.issuer, None, "no discovery, so no network at add time");
    }

    #[test]
    fn missing_variable_is_named() {
        let p = lookup(&Config::default(), "uptempo8").unwrap();
        let err = fill(p.token_url.as_deref().unwrap(), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--preset-var domain"), "{err}");
    }

    #[test]
    fn unknown_preset_lists_known_ones() {
        let err = lookup(&Config::default(), "nope").unwrap_err().to_string();
        assert!(err.contains("uptempo-cas"), "{err}");
    }
}
