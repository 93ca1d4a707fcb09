//! Every shape of actor trait the macro accepts.
use trebuchet::{ActorStream, RemoteError, distributed_actor};

mod renamed {
    pub use trebuchet as core_crate;
}

/// Documented, with supertraits, a default body, raw identifiers and many arguments.
#[distributed_actor]
pub(crate) trait Everything: std::fmt::Debug {
    /// No arguments, unit result.
    async fn ping(&self) -> Result<(), RemoteError>;
    async fn r#type(&self, r#match: String) -> Result<String, RemoteError>;
    async fn many(
        &self,
        a: u8,
        b: Vec<String>,
        c: Option<(i32, bool)>,
        d: std::collections::BTreeMap<String, f64>,
    ) -> Result<usize, RemoteError>;
    async fn with_default(&self, x: u32) -> Result<u32, RemoteError> {
        Ok(x * 2)
    }
    /// A stream method.
    #[stream]
    async fn ticks(&self, every_ms: u64) -> Result<ActorStream<u64>, RemoteError>;
}

#[distributed_actor(crate = "renamed::core_crate")]
trait ThroughAReexport {
    async fn get(&self) -> Result<u64, RemoteError>;
}

#[derive(Debug)]
struct Impl;

impl Everything for Impl {
    async fn ping(&self) -> Result<(), RemoteError> {
        Ok(())
    }
    async fn r#type(&self, r#match: String) -> Result<String, RemoteError> {
        Ok(r#match)
    }
    async fn many(
        &self,
        a: u8,
        b: Vec<String>,
        _c: Option<(i32, bool)>,
        _d: std::collections::BTreeMap<String, f64>,
    ) -> Result<usize, RemoteError> {
        Ok(a as usize + b.len())
    }
    async fn ticks(&self, every_ms: u64) -> Result<ActorStream<u64>, RemoteError> {
        Ok(ActorStream::new(futures_util::stream::iter(0..every_ms)))
    }
}

fn assert_client<T: Everything + Clone + Send + Sync>() {}

fn main() {
    assert_client::<EverythingClient>();
    let _ = <EverythingProtocol as trebuchet::ActorProtocol>::METHODS;
    let _ = Impl.into_actor();
    let _: Option<ThroughAReexportClient> = None;
}
