use trebuchet::{RemoteError, distributed_actor};

#[distributed_actor]
trait Counter {
    async fn into_actor(&self) -> Result<(), RemoteError>;
    async fn get_value(&self) -> Result<u64, RemoteError>;
    async fn get__value(&self) -> Result<u64, RemoteError>;
}

fn main() {}
