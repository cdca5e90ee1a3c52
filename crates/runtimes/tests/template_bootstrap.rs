//! The agent forks Python runtimes from templates only under the bootstrap it models
//! (`ember_agent::container::template::expected_bootstrap`): it must be the one provisioned.

#[test]
fn the_agent_models_the_provisioned_bootstrap() {
    for minor in [9, 10, 11, 12, 13, 14] {
        assert_eq!(
            ember_agent::container::template::expected_bootstrap(minor),
            ember_runtimes::bootstrap_script(minor),
            "python3.{minor}"
        );
    }
}
