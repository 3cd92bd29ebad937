//! The preview header a router matches, with its value resolved: a literal
//! `spec.preview.header.value`, or the key of a Secret named by
//! `spec.preview.headerValueFrom.secretKeyRef`. Errors name the field and
//! the Secret, never the value.

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use teal_api::BlueGreen;

use super::Target;
use crate::reconcile::{Error, Misconfigured};

/// The preview header: exact name and value.
#[derive(Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

impl std::fmt::Debug for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Header")
            .field("name", &self.name)
            .field("value", &"<redacted>")
            .finish()
    }
}

/// The literal header of the spec, if any (no Secret is read).
pub fn literal(bg: &BlueGreen) -> Option<Header> {
    let h = bg.spec.preview.header.as_ref()?;
    (bg.spec.preview.header_value_from.is_none()).then(|| Header {
        name: h.name.clone(),
        value: h.value.clone(),
    })
}

fn secret_problem(problem: String) -> Error {
    Misconfigured::PreviewSecret { problem }.into()
}

/// The preview header with its value, reading the Secret if the spec names one.
pub async fn resolve(t: &Target<'_>) -> Result<Option<Header>, Error> {
    let p = &t.bg.spec.preview;
    let Some(h) = &p.header else {
        return Ok(None);
    };
    let Some(from) = &p.header_value_from else {
        return Ok(literal(t.bg));
    };
    let r = &from.secret_key_ref;
    let secrets: Api<Secret> = Api::namespaced(t.client.clone(), t.ns);
    let Some(secret) = secrets.get_opt(&r.name).await? else {
        return Err(secret_problem(format!(
            "Secret {}/{} does not exist: create it with the key {:?}",
            t.ns, r.name, r.key
        )));
    };
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(&r.key).cloned())
        });
    let Some(value) = value else {
        return Err(secret_problem(format!(
            "Secret {}/{} has no key {:?}",
            t.ns, r.name, r.key
        )));
    };
    let value = value.trim_end_matches(['\n', '\r']).to_string();
    if value.is_empty() || value.chars().any(|c| c.is_control()) {
        return Err(secret_problem(format!(
            "key {:?} of Secret {}/{} must be a non-empty value without control characters",
            r.key, t.ns, r.name
        )));
    }
    Ok(Some(Header {
        name: h.name.clone(),
        value,
    }))
}
