//! [`AwsKms`]: customer-managed keys in AWS KMS (or anything speaking its API, such as
//! `moto_server` in tests), through `aws-sdk-kms`.
//!
//! API reference: <https://docs.aws.amazon.com/kms/latest/APIReference/>.

use std::time::Duration;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_kms::Client;
use aws_sdk_kms::config::timeout::TimeoutConfig;
use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{DataKeySpec, EncryptionAlgorithmSpec};
use zeroize::Zeroizing;

use crate::{
    Dek, EncryptionContext, KeyInfo, KeyState, KmsError, KmsFuture, KmsProvider, RotateOutcome,
    WrappedDek,
};

/// Time to establish a TCP + TLS connection to KMS: 3 s.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time for one attempt of a KMS request, connection included: 4 s.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(4);
/// Time for a whole KMS operation, retries and backoff included: 10 s. A dead or
/// unreachable KMS fails a wake with [`KmsError::Unavailable`] after at most this long
/// per call, instead of hanging it.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

/// The timeouts Lakebed applies to KMS clients: [`CONNECT_TIMEOUT`], [`ATTEMPT_TIMEOUT`],
/// [`OPERATION_TIMEOUT`].
pub fn default_timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build()
}

/// A [`KmsProvider`] backed by AWS KMS.
///
/// Every call that uses a key (`generate_data_key`, `decrypt`, `re_encrypt`,
/// `rotate_key_material`) first asks `DescribeKey` and refuses with
/// [`KmsError::KeyNotUsable`] unless the key is `Enabled`. Real AWS KMS refuses such calls
/// itself (`DisabledException`, `KMSInvalidStateException`), but `moto_server` keeps
/// encrypting and decrypting with disabled keys and keys pending deletion; the check makes
/// both behave alike, names the key's state in the error, and costs one small extra request
/// per wake. The SDK retries transient failures (standard retry mode, 3 attempts) within
/// [`OPERATION_TIMEOUT`].
///
/// Cheap to clone (the SDK client is reference counted).
#[derive(Clone, Debug)]
pub struct AwsKms {
    client: Client,
}

impl AwsKms {
    /// Builds a client from the standard AWS environment: credentials from the default
    /// chain (env `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE` and the shared
    /// config files, `credential_process`, web identity, ECS and EC2 instance metadata; SSO
    /// profiles are not supported), region from `AWS_REGION`/`AWS_DEFAULT_REGION` or the
    /// profile, endpoint from `AWS_ENDPOINT_URL_KMS` or `AWS_ENDPOINT_URL` if set.
    ///
    /// `endpoint_override` (from Lakebed's config, e.g. `http://127.0.0.1:5000` for
    /// `moto_server`) wins over the environment. Timeouts: [`default_timeouts`].
    ///
    /// # Errors
    ///
    /// [`KmsError::Other`] if no region is configured: every KMS request would fail
    /// otherwise, so this is reported at startup rather than at the first wake.
    pub async fn from_env(endpoint_override: Option<String>) -> Result<AwsKms, KmsError> {
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(default_timeouts())
            .load()
            .await;
        if sdk.region().is_none() {
            return Err(KmsError::Other(
                "no AWS region configured for KMS: set AWS_REGION, or a region in the AWS profile"
                    .into(),
            ));
        }
        let mut conf = aws_sdk_kms::config::Builder::from(&sdk);
        if let Some(url) = endpoint_override {
            conf = conf.endpoint_url(url);
        }
        Ok(AwsKms {
            client: Client::from_conf(conf.build()),
        })
    }

    /// Builds a client from an explicit SDK configuration (region, credentials, endpoint),
    /// reading nothing from the environment. Tests use this with fixed fake credentials.
    ///
    /// If `sdk` sets no operation timeout, [`default_timeouts`] are applied.
    pub fn with_config(sdk: &SdkConfig) -> AwsKms {
        let mut conf = aws_sdk_kms::config::Builder::from(sdk);
        let has_timeout = sdk
            .timeout_config()
            .and_then(|t| t.operation_timeout())
            .is_some();
        if !has_timeout {
            conf = conf.timeout_config(default_timeouts());
        }
        AwsKms {
            client: Client::from_conf(conf.build()),
        }
    }

    /// Wraps an existing SDK client as it is (its timeouts and retries included).
    pub fn from_client(client: Client) -> AwsKms {
        AwsKms { client }
    }

    /// The underlying SDK client, for administrative calls this trait does not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// `DescribeKey`: the key's ARN and state.
    async fn key_state(&self, key_id: &str) -> Result<(String, KeyState), KmsError> {
        let out = self
            .client
            .describe_key()
            .key_id(key_id)
            .send()
            .await
            .map_err(|e| map_sdk_error(e, key_id))?;
        let meta = out.key_metadata.ok_or_else(|| {
            KmsError::Other(format!("DescribeKey of {key_id} returned no key metadata"))
        })?;
        let arn = meta.arn().unwrap_or(meta.key_id()).to_owned();
        let state = match meta.key_state() {
            Some(s) => KeyState::from_aws(s.as_str()),
            None => KeyState::Other("unknown".into()),
        };
        Ok((arn, state))
    }

    /// `DescribeKey`, then [`KmsError::KeyNotUsable`] unless `Enabled`; returns the ARN.
    async fn usable_key(&self, key_id: &str) -> Result<String, KmsError> {
        let (arn, state) = self.key_state(key_id).await?;
        if state.is_usable() {
            Ok(arn)
        } else {
            Err(KmsError::KeyNotUsable { key_id: arn, state })
        }
    }

    /// Fills in the real state when KMS answered `KMSInvalidStateException` (which does not
    /// say the state), by asking `DescribeKey`; other errors pass through.
    async fn with_state(&self, err: KmsError) -> KmsError {
        match err {
            KmsError::KeyNotUsable {
                key_id,
                state: KeyState::Other(s),
            } if s == INVALID_STATE => match self.key_state(&key_id).await {
                Ok((arn, state)) if !state.is_usable() => {
                    KmsError::KeyNotUsable { key_id: arn, state }
                }
                _ => KmsError::KeyNotUsable {
                    key_id,
                    state: KeyState::Other(s),
                },
            },
            other => other,
        }
    }
}

impl KmsProvider for AwsKms {
    fn name(&self) -> &str {
        "aws-kms"
    }

    fn generate_data_key<'a>(
        &'a self,
        key_id: &'a str,
        ctx: &'a EncryptionContext,
    ) -> KmsFuture<'a, (Dek, WrappedDek)> {
        Box::pin(async move {
            let arn = self.usable_key(key_id).await?;
            let out = match self
                .client
                .generate_data_key()
                .key_id(&arn)
                .key_spec(DataKeySpec::Aes256)
                .set_encryption_context(context_map(ctx))
                .send()
                .await
            {
                Ok(out) => out,
                Err(e) => return Err(self.with_state(map_sdk_error(e, &arn)).await),
            };
            let plaintext = Zeroizing::new(out.plaintext.map(Blob::into_inner).unwrap_or_default());
            let dek = Dek::from_slice(&plaintext).ok_or_else(|| {
                KmsError::Other(format!(
                    "GenerateDataKey returned a {}-byte key, expected 32",
                    plaintext.len()
                ))
            })?;
            let ciphertext = out.ciphertext_blob.map(Blob::into_inner).ok_or_else(|| {
                KmsError::Other("GenerateDataKey returned no CiphertextBlob".into())
            })?;
            let key_id = out.key_id.unwrap_or(arn);
            Ok((dek, WrappedDek { ciphertext, key_id }))
        })
    }

    fn decrypt<'a>(
        &'a self,
        wrapped: &'a WrappedDek,
        ctx: &'a EncryptionContext,
    ) -> KmsFuture<'a, Dek> {
        Box::pin(async move {
            self.usable_key(&wrapped.key_id).await?;
            let out = match self
                .client
                .decrypt()
                .key_id(&wrapped.key_id)
                .ciphertext_blob(Blob::new(wrapped.ciphertext.clone()))
                .encryption_algorithm(EncryptionAlgorithmSpec::SymmetricDefault)
                .set_encryption_context(context_map(ctx))
                .send()
                .await
            {
                Ok(out) => out,
                Err(e) => return Err(self.with_state(map_sdk_error(e, &wrapped.key_id)).await),
            };
            let plaintext = Zeroizing::new(out.plaintext.map(Blob::into_inner).unwrap_or_default());
            Dek::from_slice(&plaintext).ok_or_else(|| {
                KmsError::Other(format!(
                    "Decrypt returned a {}-byte key, expected 32",
                    plaintext.len()
                ))
            })
        })
    }

    fn re_encrypt<'a>(
        &'a self,
        wrapped: &'a WrappedDek,
        ctx: &'a EncryptionContext,
        destination_key_id: &'a str,
    ) -> KmsFuture<'a, WrappedDek> {
        Box::pin(async move {
            self.usable_key(&wrapped.key_id).await?;
            let destination = self.usable_key(destination_key_id).await?;
            let out = match self
                .client
                .re_encrypt()
                .ciphertext_blob(Blob::new(wrapped.ciphertext.clone()))
                .source_key_id(&wrapped.key_id)
                .set_source_encryption_context(context_map(ctx))
                .destination_key_id(&destination)
                .set_destination_encryption_context(context_map(ctx))
                .send()
                .await
            {
                Ok(out) => out,
                Err(e) => return Err(self.with_state(map_sdk_error(e, &wrapped.key_id)).await),
            };
            let ciphertext = out
                .ciphertext_blob
                .map(Blob::into_inner)
                .ok_or_else(|| KmsError::Other("ReEncrypt returned no CiphertextBlob".into()))?;
            let key_id = out.key_id.unwrap_or(destination);
            Ok(WrappedDek { ciphertext, key_id })
        })
    }

    fn describe_key<'a>(&'a self, key_id: &'a str) -> KmsFuture<'a, KeyInfo> {
        Box::pin(async move {
            let (arn, state) = self.key_state(key_id).await?;
            let rotation_enabled = match self
                .client
                .get_key_rotation_status()
                .key_id(&arn)
                .send()
                .await
            {
                Ok(out) => Some(out.key_rotation_enabled),
                Err(e) => {
                    tracing::debug!(key_id = %arn, error = %DisplayErrorContext(&e), "GetKeyRotationStatus failed");
                    None
                }
            };
            Ok(KeyInfo {
                key_id: arn,
                state,
                rotation_enabled,
            })
        })
    }

    fn rotate_key_material<'a>(&'a self, key_id: &'a str) -> KmsFuture<'a, RotateOutcome> {
        Box::pin(async move {
            let arn = self.usable_key(key_id).await?;
            let on_demand = match self.client.rotate_key_on_demand().key_id(&arn).send().await {
                Ok(_) => return Ok(RotateOutcome::RotatedOnDemand),
                Err(e) if is_unsupported_operation(&e) => DisplayErrorContext(&e).to_string(),
                // On RotateKeyOnDemand, LimitExceededException means this key's quota of
                // on-demand rotations is used up: not transient, unlike request throttling.
                Err(e) if e.code() == Some("LimitExceededException") => {
                    return Err(KmsError::Other(format!(
                        "RotateKeyOnDemand of {arn}: on-demand rotation limit reached: {}",
                        e.message().unwrap_or("LimitExceededException")
                    )));
                }
                Err(e) => return Err(self.with_state(map_sdk_error(e, &arn)).await),
            };
            tracing::info!(key_id = %arn, "RotateKeyOnDemand not supported by this KMS; enabling automatic rotation instead");
            match self.client.enable_key_rotation().key_id(&arn).send().await {
                Ok(_) => Ok(RotateOutcome::AutomaticRotationEnabled),
                Err(e) if is_unsupported_operation(&e) => Err(KmsError::Unsupported(format!(
                    "key {arn} can not be rotated: RotateKeyOnDemand: {on_demand}; EnableKeyRotation: {}",
                    DisplayErrorContext(&e)
                ))),
                Err(e) => Err(self.with_state(map_sdk_error(e, &arn)).await),
            }
        })
    }
}

/// The encryption context as the SDK wants it; `None` (no field sent) when empty.
fn context_map(ctx: &EncryptionContext) -> Option<std::collections::HashMap<String, String>> {
    if ctx.is_empty() {
        None
    } else {
        Some(
            ctx.as_map()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    }
}

/// Placeholder state for `KMSInvalidStateException` until [`AwsKms::with_state`] asks.
const INVALID_STATE: &str = "invalid for this operation";

/// Whether the server does not offer the operation at all (as opposed to refusing it for
/// this key for another reason).
fn is_unsupported_operation<E: ProvideErrorMetadata>(err: &SdkError<E>) -> bool {
    let by_code = matches!(
        err.code(),
        Some(
            "UnsupportedOperationException"
                | "UnknownOperationException"
                | "InvalidAction"
                | "NotImplemented"
        )
    );
    let by_status = err
        .raw_response()
        .is_some_and(|r| r.status().as_u16() == 501);
    by_code || by_status
}

/// Maps an SDK error to a [`KmsError`]; `key_id` is the key the request was about.
fn map_sdk_error<E>(err: SdkError<E>, key_id: &str) -> KmsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let message = || err.message().unwrap_or_default().to_owned();
    match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            return KmsError::Unavailable(DisplayErrorContext(&err).to_string());
        }
        SdkError::ConstructionFailure(_) => {
            return KmsError::Other(DisplayErrorContext(&err).to_string());
        }
        _ => {}
    }
    match err.code() {
        Some("NotFoundException") => KmsError::NotFound {
            key_id: key_id.to_owned(),
        },
        Some("DisabledException") => KmsError::KeyNotUsable {
            key_id: key_id.to_owned(),
            state: KeyState::Disabled,
        },
        Some("KeyUnavailableException") => KmsError::KeyNotUsable {
            key_id: key_id.to_owned(),
            state: KeyState::Unavailable,
        },
        Some("KMSInvalidStateException") => KmsError::KeyNotUsable {
            key_id: key_id.to_owned(),
            state: KeyState::Other(INVALID_STATE.into()),
        },
        Some("InvalidCiphertextException" | "IncorrectKeyException") => KmsError::InvalidCiphertext,
        Some(
            "AccessDeniedException"
            | "UnrecognizedClientException"
            | "InvalidClientTokenId"
            | "InvalidSignatureException"
            | "IncompleteSignature"
            | "MissingAuthenticationToken"
            | "ExpiredTokenException"
            | "NotAuthorizedException",
        ) => KmsError::AccessDenied(format!("{}: {}", err.code().unwrap_or_default(), message())),
        Some(
            "KMSInternalException"
            | "DependencyTimeoutException"
            | "ThrottlingException"
            | "LimitExceededException"
            | "ServiceUnavailableException"
            | "InternalFailure"
            | "RequestTimeout",
        ) => KmsError::Unavailable(format!("{}: {}", err.code().unwrap_or_default(), message())),
        Some("UnsupportedOperationException") => KmsError::Unsupported(message()),
        Some(code) => KmsError::Other(format!("{code}: {}", message())),
        None => {
            let status = err.raw_response().map(|r| r.status().as_u16());
            match status {
                Some(s) if s >= 500 => KmsError::Unavailable(format!("HTTP {s} from KMS")),
                Some(s) => KmsError::Other(format!("HTTP {s} from KMS without an error code")),
                None => KmsError::Other(DisplayErrorContext(&err).to_string()),
            }
        }
    }
}
