//! The few S3 requests object lock needs and the `object_store` crate does not make: a PUT
//! with lock headers, reading and extending an object's retention, listing and deleting the
//! versions of one key, and reading the bucket's lock configuration.
//!
//! The requests are signed with `object_store`'s own SigV4 signer and credential provider and
//! sent through its HTTP client (same timeouts and TLS settings as every other request of the
//! repository), so nothing here re-implements S3 authentication. Responses are small XML
//! documents of a fixed shape; the handful of fields read are picked out by tag.

use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{HeaderMap, Method, StatusCode};
use object_store::aws::{AwsAuthorizer, AwsCredentialProvider};
use object_store::client::{HttpClient, HttpConnector, HttpRequestBody, ReqwestConnector};
use object_store::ClientOptions;
use std::io;

/// Object lock modes (S3's names): compliance cannot be shortened by anyone; governance can be
/// by a user with the bypass permission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    Compliance,
    Governance,
}

impl LockMode {
    pub fn as_s3(self) -> &'static str {
        match self {
            LockMode::Compliance => "COMPLIANCE",
            LockMode::Governance => "GOVERNANCE",
        }
    }
}

/// One version of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub id: String,
    pub latest: bool,
}

/// A signed-request client for one bucket.
pub struct S3Raw {
    http: HttpClient,
    credentials: AwsCredentialProvider,
    region: String,
    /// `https://host[:port]/bucket` (path style) or `https://bucket.s3.region.amazonaws.com`.
    base: String,
    /// The repository, for messages.
    name: String,
}

impl std::fmt::Debug for S3Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Raw({})", self.base)
    }
}

/// What one request returned.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

fn encode_path(path: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(path, SET).to_string()
}

fn encode_query(v: &str) -> String {
    percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The date format S3 takes for a retention (`2027-01-31T12:00:00Z`).
fn s3_date(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl S3Raw {
    pub fn new(
        name: &str,
        options: &ClientOptions,
        credentials: AwsCredentialProvider,
        endpoint: Option<&str>,
        region: Option<&str>,
        bucket: &str,
    ) -> io::Result<S3Raw> {
        let region = region.unwrap_or("us-east-1").to_string();
        let base = match endpoint {
            Some(e) => format!("{}/{bucket}", e.trim_end_matches('/')),
            None => format!("https://{bucket}.s3.{region}.amazonaws.com"),
        };
        let http = ReqwestConnector::default()
            .connect(options)
            .map_err(|e| io::Error::other(format!("repository {name}: {e}")))?;
        Ok(S3Raw {
            http,
            credentials,
            region,
            base,
            name: name.to_string(),
        })
    }

    /// Sends one signed request; `path` is the object's full path in the bucket ("" for the
    /// bucket itself), `query` already encoded.
    async fn send(&self, method: Method, path: &str, query: &str, headers: &[(&str, String)], body: Vec<u8>) -> io::Result<Reply> {
        let what = format!(
            "repository {}: {method} {path}{}{query}",
            self.name,
            if query.is_empty() { "" } else { "?" }
        );
        let err = |m: String| io::Error::other(format!("{what}: {m}"));
        let mut url = format!("{}/{}", self.base, encode_path(path));
        if !query.is_empty() {
            url.push('?');
            url.push_str(query);
        }
        let mut b = http::Request::builder().method(method).uri(&url);
        for (k, v) in headers {
            b = b.header(*k, v);
        }
        let mut req = b.body(HttpRequestBody::from(body)).map_err(|e| err(e.to_string()))?;
        let credential = self.credentials.get_credential().await.map_err(|e| err(e.to_string()))?;
        AwsAuthorizer::new(&credential, "s3", &self.region).authorize(&mut req, None);
        let resp = self.http.execute(req).await.map_err(|e| err(e.to_string()))?;
        let (parts, body) = resp.into_parts();
        let body = body.bytes().await.map_err(|e| err(e.to_string()))?;
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    fn failed(&self, op: &str, path: &str, r: &Reply) -> io::Error {
        let code = xml_field(&String::from_utf8_lossy(&r.body), "Code").unwrap_or_default();
        let message = xml_field(&String::from_utf8_lossy(&r.body), "Message").unwrap_or_default();
        let kind = if r.status == StatusCode::FORBIDDEN {
            io::ErrorKind::PermissionDenied
        } else {
            io::ErrorKind::Other
        };
        io::Error::new(
            kind,
            format!("repository {}: {op} {path}: HTTP {} {code} {message}", self.name, r.status.as_u16()),
        )
    }

    /// PUTs `data` with a retention of `mode` until `until`; the reply's ETag.
    pub async fn put_locked(&self, path: &str, data: Vec<u8>, mode: LockMode, until: DateTime<Utc>) -> io::Result<Option<String>> {
        use md5::{Digest, Md5};
        let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(&data));
        let headers = [
            ("content-md5", md5),
            ("x-amz-object-lock-mode", mode.as_s3().to_string()),
            ("x-amz-object-lock-retain-until-date", s3_date(until)),
        ];
        let r = self.send(Method::PUT, path, "", &headers, data).await?;
        if !r.status.is_success() {
            return Err(self.failed("PUT (locked)", path, &r));
        }
        Ok(r.headers.get("etag").and_then(|v| v.to_str().ok()).map(str::to_string))
    }

    /// The current version's retention end, `None` when it has none (or the object is absent).
    pub async fn retained_until(&self, path: &str) -> io::Result<Option<DateTime<Utc>>> {
        let r = self.send(Method::HEAD, path, "", &[], Vec::new()).await?;
        if r.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !r.status.is_success() {
            return Err(self.failed("HEAD", path, &r));
        }
        let Some(v) = r.headers.get("x-amz-object-lock-retain-until-date") else {
            return Ok(None);
        };
        let text = v.to_str().unwrap_or_default();
        DateTime::parse_from_rfc3339(text)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|e| io::Error::other(format!("repository {}: HEAD {path}: retain-until date {text:?}: {e}", self.name)))
    }

    /// Sets the current version's retention to `mode` until `until` (only ever extended).
    pub async fn extend(&self, path: &str, mode: LockMode, until: DateTime<Utc>) -> io::Result<()> {
        use md5::{Digest, Md5};
        let body = format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>{}</Mode><RetainUntilDate>{}</RetainUntilDate></Retention>",
            mode.as_s3(),
            s3_date(until)
        )
        .into_bytes();
        let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(&body));
        let r = self.send(Method::PUT, path, "retention=", &[("content-md5", md5)], body).await?;
        if !r.status.is_success() {
            return Err(self.failed("PUT retention", path, &r));
        }
        Ok(())
    }

    /// Every version and delete marker of exactly `path` (the first 1000; pgark keeps at most a
    /// few per key).
    pub async fn versions(&self, path: &str) -> io::Result<Vec<Version>> {
        let query = format!("prefix={}&versions=", encode_query(path));
        let r = self.send(Method::GET, "", &query, &[], Vec::new()).await?;
        if !r.status.is_success() {
            return Err(self.failed("GET versions of", path, &r));
        }
        let text = String::from_utf8_lossy(&r.body);
        let mut out = Vec::new();
        for tag in ["Version", "DeleteMarker"] {
            for block in xml_blocks(&text, tag) {
                if xml_field(block, "Key").as_deref() != Some(path) {
                    continue;
                }
                if let Some(id) = xml_field(block, "VersionId") {
                    out.push(Version {
                        id,
                        latest: xml_field(block, "IsLatest").as_deref() == Some("true"),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Deletes one version (for good: no delete marker).
    pub async fn delete_version(&self, path: &str, version: &str) -> io::Result<()> {
        let query = format!("versionId={}", encode_query(version));
        let r = self.send(Method::DELETE, path, &query, &[], Vec::new()).await?;
        if !r.status.is_success() && r.status != StatusCode::NOT_FOUND {
            return Err(self.failed("DELETE version of", path, &r));
        }
        Ok(())
    }

    /// The bucket's lock configuration: `None` when object lock is not enabled on it, else
    /// its default retention rule (`None` inside: no default rule).
    pub async fn bucket_lock(&self) -> io::Result<Option<Option<String>>> {
        let r = self.send(Method::GET, "", "object-lock=", &[], Vec::new()).await?;
        let text = String::from_utf8_lossy(&r.body).to_string();
        if r.status == StatusCode::NOT_FOUND || xml_field(&text, "Code").is_some_and(|c| c.contains("ObjectLockConfigurationNotFound")) {
            return Ok(None);
        }
        if !r.status.is_success() {
            return Err(self.failed("GET object-lock of", "the bucket", &r));
        }
        if xml_field(&text, "ObjectLockEnabled").as_deref() != Some("Enabled") {
            return Ok(None);
        }
        let rule = xml_blocks(&text, "DefaultRetention").next().map(|b| {
            let mode = xml_field(b, "Mode").unwrap_or_default();
            match (xml_field(b, "Days"), xml_field(b, "Years")) {
                (Some(d), _) => format!("{mode} {d} days"),
                (_, Some(y)) => format!("{mode} {y} years"),
                _ => mode,
            }
        });
        Ok(Some(rule))
    }
}

/// The contents of each `<tag>…</tag>` in `text`.
fn xml_blocks<'a>(text: &'a str, tag: &str) -> impl Iterator<Item = &'a str> + 'a {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut rest = text;
    std::iter::from_fn(move || {
        let start = rest.find(&open)? + open.len();
        let len = rest[start..].find(&close)?;
        let block = &rest[start..start + len];
        rest = &rest[start + len + close.len()..];
        Some(block)
    })
}

/// The text of the first `<tag>…</tag>` in `text`, XML entities decoded.
fn xml_field(text: &str, tag: &str) -> Option<String> {
    xml_blocks(text, tag).next().map(|v| {
        v.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_fields_are_picked_out_of_a_listing() {
        let xml = "<ListVersionsResult><Version><Key>p/a</Key><VersionId>v2</VersionId><IsLatest>true</IsLatest></Version>\
                   <Version><Key>p/a</Key><VersionId>v1</VersionId><IsLatest>false</IsLatest></Version>\
                   <Version><Key>p/ab</Key><VersionId>x</VersionId><IsLatest>true</IsLatest></Version>\
                   <DeleteMarker><Key>p/a</Key><VersionId>d&amp;1</VersionId><IsLatest>false</IsLatest></DeleteMarker></ListVersionsResult>";
        let ids: Vec<(String, String)> = ["Version", "DeleteMarker"]
            .iter()
            .flat_map(|t| xml_blocks(xml, t).map(|b| (xml_field(b, "Key").unwrap(), xml_field(b, "VersionId").unwrap())))
            .collect();
        assert_eq!(ids.len(), 4);
        assert_eq!(ids[3], ("p/a".into(), "d&1".into()));
        assert_eq!(xml_field("<a><Code>X</Code></a>", "Code").as_deref(), Some("X"));
        assert_eq!(xml_field("<a></a>", "Code"), None);
        assert_eq!(encode_path("p/0000000100000000000000A1.zst"), "p/0000000100000000000000A1.zst");
        assert_eq!(encode_path("a b"), "a%20b");
    }
}
