//! The mux input path: arbitrary messages from a peer, to a server or agent session under v1
//! or v2 (see `mux::testing::exercise_input_path` for the input layout and the invariants).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(argocd_proxy::mux::testing::exercise_input_path(data));
});
