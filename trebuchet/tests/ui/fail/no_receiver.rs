use trebuchet::{RemoteError, distributed_actor};

#[distributed_actor]
trait Counter {
    async fn create(start: u64) -> Result<u64, RemoteError>;
}

fn main() {}
