//! The SQS client as the backend uses it: built once from the broker config (endpoint override,
//! region, fake credentials for moto, short timeouts), with a counter of HTTP requests so the
//! cost of the backend in API calls can be measured, and one place that turns SDK errors into
//! [`QueueError`]s that name the endpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_sqs::config::retry::RetryConfig;
use aws_sdk_sqs::config::timeout::TimeoutConfig;
use aws_sdk_sqs::config::{
    BehaviorVersion, ConfigBag, Credentials, Intercept, ProvideCredentials, Region,
    RuntimeComponents,
};
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::config::BrokerConfig;
use crate::error::{Msg, QueueError};

pub(crate) const BACKEND: &str = "sqs";

/// Counts every HTTP request the SDK transmits (retries included): that is what AWS bills.
#[derive(Debug)]
struct CallCounter(Arc<AtomicU64>);

impl Intercept for CallCounter {
    fn name(&self) -> &'static str {
        "jobfleet-call-counter"
    }

    fn read_before_transmit(
        &self,
        _ctx: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_sqs::error::BoxError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// What an SDK error is about, so "not found" and "invalid receipt" become the right variant.
#[derive(Clone, Copy)]
pub(crate) enum Subject<'a> {
    Queue(&'a str),
    Message(&'a str),
}

/// A cheap-to-clone handle on the client (background tasks hold one, not the whole broker).
#[derive(Clone)]
pub(crate) struct Api {
    pub client: Client,
    /// Where requests go, for error messages.
    pub endpoint: String,
    pub calls: Arc<AtomicU64>,
}

impl Api {
    pub async fn connect(cfg: &BrokerConfig) -> crate::error::Result<Api> {
        let calls = Arc::new(AtomicU64::new(0));
        // Long polls hold a request open for up to 20 s, so there is no read timeout; a dead
        // endpoint is caught by the connect timeout and a short retry budget instead.
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(2))
            .operation_attempt_timeout(Duration::from_secs(30))
            .operation_timeout(Duration::from_secs(70))
            .build();
        let retries = RetryConfig::standard()
            .with_max_attempts(3)
            .with_initial_backoff(Duration::from_millis(100))
            .with_max_backoff(Duration::from_secs(2));
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(timeouts)
            .retry_config(retries);
        if let Some(region) = &cfg.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(url) = &cfg.url {
            loader = loader.endpoint_url(url.clone());
        }
        let sdk = loader.load().await;
        let region = sdk
            .region()
            .cloned()
            .unwrap_or_else(|| Region::new("us-east-1"));
        let mut conf = aws_sdk_sqs::config::Builder::from(&sdk).region(region.clone());
        if cfg.url.is_some() && !has_credentials(&sdk).await {
            // moto and LocalStack accept any key; AWS itself never gets here (no override).
            conf = conf.credentials_provider(Credentials::new(
                "jobfleet-local",
                "jobfleet-local",
                None,
                None,
                "jobfleet-local-endpoint",
            ));
        }
        conf = conf.interceptor(CallCounter(calls.clone()));
        let endpoint = cfg
            .url
            .clone()
            .unwrap_or_else(|| format!("https://sqs.{region}.amazonaws.com"));
        Ok(Api {
            client: Client::from_conf(conf.build()),
            endpoint,
            calls,
        })
    }

    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Turns an SDK error into a [`QueueError`]: transport failures name the endpoint, a missing
    /// queue and a stale receipt handle get their own variants.
    pub fn err<E, R>(&self, op: &'static str, subject: Subject<'_>, e: SdkError<E, R>) -> QueueError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        let text = format!("{op}: {}", DisplayErrorContext(&e));
        match &e {
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
                return QueueError::unavailable(BACKEND, &self.endpoint, Msg(text));
            }
            SdkError::ResponseError(_) => {
                return QueueError::unavailable(BACKEND, &self.endpoint, Msg(text));
            }
            _ => {}
        }
        let code = e.code().unwrap_or_default();
        match subject {
            Subject::Queue(q) if is_missing_queue(code) => QueueError::QueueNotFound {
                backend: BACKEND,
                queue: q.to_owned(),
            },
            Subject::Message(id) if is_lease_gone(code) => QueueError::LeaseLost {
                backend: BACKEND,
                id: id.to_owned(),
            },
            _ => QueueError::backend(BACKEND, op, Msg(text)),
        }
    }
}

/// With the JSON protocol SQS answers with the short code; query-compatible clients and older
/// emulators send the long `AWS.SimpleQueueService.*` form. Accept both.
pub(crate) fn is_missing_queue(code: &str) -> bool {
    code.ends_with("NonExistentQueue") || code.ends_with("QueueDoesNotExist")
}

pub(crate) fn is_lease_gone(code: &str) -> bool {
    code.ends_with("ReceiptHandleIsInvalid")
        || code.ends_with("MessageNotInflight")
        || code.ends_with("InvalidReceiptHandle")
}

pub(crate) fn is_queue_exists(code: &str) -> bool {
    code.ends_with("QueueAlreadyExists") || code.ends_with("QueueNameExists")
}

/// Whether the SDK's own chain finds credentials (bounded: IMDS probing can take seconds).
async fn has_credentials(sdk: &aws_config::SdkConfig) -> bool {
    let Some(provider) = sdk.credentials_provider() else {
        return false;
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(3), provider.provide_credentials()).await,
        Ok(Ok(_))
    )
}

/// Rebuilds an error for the other waiters of a batch (errors are not `Clone`).
pub(crate) fn copy_err(e: &QueueError) -> QueueError {
    match e {
        QueueError::Unavailable {
            backend,
            url,
            source,
        } => QueueError::Unavailable {
            backend,
            url: url.clone(),
            source: Box::new(Msg(source.to_string())),
        },
        QueueError::QueueNotFound { backend, queue } => QueueError::QueueNotFound {
            backend,
            queue: queue.clone(),
        },
        QueueError::LeaseLost { backend, id } => QueueError::LeaseLost {
            backend,
            id: id.clone(),
        },
        QueueError::Backend {
            backend,
            op,
            source,
        } => QueueError::Backend {
            backend,
            op,
            source: Box::new(Msg(source.to_string())),
        },
        QueueError::Config(s) => QueueError::Config(s.clone()),
        QueueError::Unsupported { backend, what } => QueueError::Unsupported { backend, what },
    }
}

/// Whole seconds for a delay or visibility, rounded up so a job never runs early, clamped to
/// what SQS accepts.
pub(crate) fn secs_ceil(d: Duration, max: u64) -> i32 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.min(max) as i32
}
