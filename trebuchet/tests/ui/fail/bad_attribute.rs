use trebuchet::{RemoteError, distributed_actor};

#[distributed_actor(name = "counter")]
trait Counter {
    async fn get(&self) -> Result<u64, RemoteError>;
}

fn main() {}
