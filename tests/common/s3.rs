//! An S3 store read back through the S3 API (the `replica` bucket, created on first use),
//! and the `[sink.s3]` section that writes to it.

use super::objects::{ObjectInfo, ObjectStore};
use aws_sdk_s3::Client;
use std::collections::BTreeMap;
use std::time::Duration;

/// The bucket `replica` on an S3 endpoint.
pub struct S3Store {
    pub client: Client,
    pub bucket: String,
}

#[async_trait::async_trait]
impl ObjectStore for S3Store {
    async fn objects(&self, prefix: &str) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        let Ok(list) = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .send()
            .await
        else {
            return out;
        };
        for o in list.contents() {
            let key = o.key().unwrap().to_string();
            if let Ok(obj) = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(&key)
                .send()
                .await
            {
                out.insert(key, obj.body.collect().await.unwrap().into_bytes().to_vec());
            }
        }
        out
    }

    async fn info(&self, name: &str) -> Option<ObjectInfo> {
        let head = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(name)
            .send()
            .await
            .ok()?;
        Some(ObjectInfo {
            content_type: head.content_type().map(String::from),
            mtime: head.metadata().and_then(|m| m.get("mtime").cloned()),
            version: format!("{:?} {:?}", head.last_modified(), head.e_tag()),
        })
    }
}

pub async fn s3_store(endpoint: &str) -> S3Store {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .http_client(http)
        .region(aws_sdk_s3::config::Region::new("us-east-2"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .build();
    let client = Client::from_conf(config);
    let mut last = String::new();
    for _ in 0..60 {
        let location = aws_sdk_s3::types::CreateBucketConfiguration::builder()
            .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::UsEast2)
            .build();
        match client
            .create_bucket()
            .bucket("replica")
            .create_bucket_configuration(location)
            .send()
            .await
        {
            Ok(_) => {
                return S3Store {
                    client,
                    bucket: "replica".into(),
                };
            }
            Err(e) => last = format!("{e:?}"),
        }
        if client.head_bucket().bucket("replica").send().await.is_ok() {
            return S3Store {
                client,
                bucket: "replica".into(),
            };
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("cannot create a bucket at {endpoint}: {last}");
}

pub fn s3_section(endpoint: &str, directory: &str, incremental: bool) -> String {
    format!(
        "[sink.s3]\nenabled = true\naws_access_key_id = \"test\"\naws_secret_access_key = \"test\"\n\
         region = \"us-east-2\"\nbucket = \"replica\"\ndirectory = \"{directory}\"\nendpoint = \"{endpoint}\"\n\
         uploader_part_size_mb = 8\nis_incremental = {incremental}\n"
    )
}
