use trebuchet::{RemoteError, distributed_actor};

#[distributed_actor]
trait Counter {
    async fn increment(&mut self, by: u64) -> Result<u64, RemoteError>;
}

fn main() {}
