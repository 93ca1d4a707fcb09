use proc_macro::TokenStream;
#[proc_macro_attribute]
pub fn distributed_actor(_a: TokenStream, i: TokenStream) -> TokenStream {
    i
}
