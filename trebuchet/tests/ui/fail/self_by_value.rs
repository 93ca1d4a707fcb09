use trebuchet::{RemoteError, distributed_actor};

#[distributed_actor]
trait Counter {
    async fn finish(self) -> Result<u64, RemoteError>;
}

fn main() {}
