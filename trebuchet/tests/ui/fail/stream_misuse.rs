use trebuchet::{ActorStream, RemoteError, distributed_actor};

#[distributed_actor]
trait Feed {
    #[stream]
    async fn not_a_stream(&self) -> Result<u64, RemoteError>;
    async fn unmarked(&self) -> Result<ActorStream<u64>, RemoteError>;
    #[stream(buffer = 4)]
    async fn with_arguments(&self) -> Result<ActorStream<u64>, RemoteError>;
}

fn main() {}
