//! Compile-time checks of `#[distributed_actor]`: each file under tests/ui/fail must fail with
//! the error in its `.stderr`; each file under tests/ui/pass must compile.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/fail/*.rs");
    cases.pass("tests/ui/pass/*.rs");
}
