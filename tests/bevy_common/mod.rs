//! Helpers shared by the Bevy plugin's test files.

use bevy_app::{App, TaskPoolOptions, TaskPoolPlugin};
use tidyheap::bevy::{TidyheapConfig, TidyheapPlugin};

/// Every app of these tests runs its systems on 4 compute threads (the pool is global to
/// the process; whichever test starts first sets it, always to the same size).
pub fn app_with(plugin: TidyheapPlugin) -> App {
    let mut app = App::new();
    app.add_plugins(TaskPoolPlugin {
        task_pool_options: TaskPoolOptions::with_num_threads(4),
    })
    .add_plugins(plugin);
    app
}

pub fn plugin(config: TidyheapConfig) -> TidyheapPlugin {
    TidyheapPlugin::try_new(config).expect("a valid configuration")
}
