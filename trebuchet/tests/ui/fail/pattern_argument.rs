use trebuchet::{RemoteError, distributed_actor};

#[distributed_actor]
trait Geometry {
    async fn area(&self, (w, h): (u32, u32)) -> Result<u32, RemoteError>;
    async fn ignore(&self, _: u32) -> Result<(), RemoteError>;
}

fn main() {}
