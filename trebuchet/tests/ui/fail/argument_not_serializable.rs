use trebuchet::{RemoteError, distributed_actor};

struct Opaque;

#[distributed_actor]
trait Vault {
    async fn store(&self, value: Opaque) -> Result<(), RemoteError>;
}

fn main() {}
