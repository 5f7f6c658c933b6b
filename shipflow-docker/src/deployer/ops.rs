//! The engine calls the deployer makes for an app's containers, with errors that
//! name the app and the step.

use bollard::auth::DockerCredentials;
use bollard::errors::Error as EngineError;
use bollard::query_parameters::{
    CreateImageOptions, ListContainersOptions, LogsOptions, RemoveContainerOptions,
    RenameContainerOptions, StartContainerOptions, StopContainerOptions,
};
use futures_util::StreamExt;
use shipflow_core::{App, Context};

use super::{EngineDeployer, LOG_LINES};
use crate::DockerError;
use crate::state::{self, AppContainer, AppState};
use crate::states;
use crate::timing::timed;

impl EngineDeployer {
    pub(super) fn engine_err(
        app: &App,
        step: impl Into<String>,
    ) -> impl FnOnce(EngineError) -> DockerError {
        let app = app.name.clone();
        let step = step.into();
        move |source| DockerError::Engine {
            app,
            step,
            source: Box::new(source),
        }
    }

    /// The app's containers, as the engine lists them now: labelled with the app's
    /// name and named after its base name.
    pub(super) async fn state(&self, app: &App) -> Result<AppState, DockerError> {
        let base = state::base_name(app, &*self.target(app)?);
        let filters = [(
            "label".to_owned(),
            vec![format!("{}={}", state::APP, app.name)],
        )]
        .into();
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let list = timed(
            &app.name,
            "list containers",
            states::list(self.engine.client(), options),
        )
        .await
        .map_err(Self::engine_err(app, "list containers"))?;
        Ok(AppState::new(
            list.iter()
                .filter_map(AppContainer::from_summary)
                .filter(|c| state::is_revision_of(&c.name, &base))
                .collect(),
        ))
    }

    pub(super) async fn start(&self, app: &App, name: &str) -> Result<(), DockerError> {
        let start = self
            .engine
            .client()
            .start_container(name, None::<StartContainerOptions>);
        match timed(&app.name, "start", start).await {
            Ok(())
            | Err(EngineError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(Self::engine_err(app, format!("start {name}"))(e)),
        }
    }

    pub(super) async fn stop(&self, app: &App, name: &str) -> Result<(), DockerError> {
        self.stop_within(app, name, self.stop_timeout).await
    }

    /// Stops `name`, killing it after `grace` seconds.
    pub(super) async fn stop_within(
        &self,
        app: &App,
        name: &str,
        grace: i32,
    ) -> Result<(), DockerError> {
        let options = StopContainerOptions {
            t: Some(grace),
            signal: None,
        };
        let stop = self.engine.client().stop_container(name, Some(options));
        match timed(&app.name, "stop", stop).await {
            Ok(())
            | Err(EngineError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(Self::engine_err(app, format!("stop {name}"))(e)),
        }
    }

    /// Renames container `name` (by name or id) to `to`.
    pub(super) async fn rename(&self, app: &App, name: &str, to: &str) -> Result<(), DockerError> {
        let options = RenameContainerOptions {
            name: to.to_owned(),
        };
        let rename = self.engine.client().rename_container(name, options);
        timed(&app.name, "rename", rename)
            .await
            .map_err(Self::engine_err(app, format!("rename {name} to {to}")))
    }

    pub(super) async fn remove(&self, app: &App, name: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        let remove = self.engine.client().remove_container(name, Some(options));
        match timed(&app.name, "remove container", remove).await {
            Ok(())
            | Err(EngineError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(Self::engine_err(app, format!("remove {name}"))(e)),
        }
    }

    /// The container's last log lines, for failure reports.
    pub(super) async fn last_logs(&self, name: &str) -> String {
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            tail: LOG_LINES.into(),
            ..Default::default()
        };
        let mut stream = self.engine.client().logs(name, Some(options));
        let mut text = String::new();
        while let Some(Ok(chunk)) = stream.next().await {
            text.push_str(&chunk.to_string());
        }
        if text.trim().is_empty() {
            "(no output)".into()
        } else {
            text.trim_end().to_owned()
        }
    }

    /// Pulls `image` unless the engine has it.
    pub(super) async fn ensure_image(
        &self,
        app: &App,
        image: &str,
        ctx: &Context,
    ) -> Result<(), DockerError> {
        let inspect = self.engine.client().inspect_image(image);
        if timed(&app.name, "inspect image", inspect).await.is_ok() {
            return Ok(());
        }
        ctx.message(format!("pulling {image}"));
        let credentials = self.credentials.as_ref().map(|c| DockerCredentials {
            username: Some(c.username.clone()),
            password: Some(c.password.clone()),
            ..Default::default()
        });
        let options = CreateImageOptions {
            from_image: Some(image.to_owned()),
            ..Default::default()
        };
        let mut stream = self
            .engine
            .client()
            .create_image(Some(options), None, credentials);
        let pull = async {
            while let Some(item) = stream.next().await {
                let info = item.map_err(Self::engine_err(app, format!("pull {image}")))?;
                if let Some(error) = info.error.or(info.error_detail.and_then(|d| d.message)) {
                    return Err(Self::engine_err(app, format!("pull {image}"))(
                        EngineError::DockerStreamError { error },
                    ));
                }
            }
            Ok(())
        };
        // Dropping the request on cancel ends the pull.
        tokio::select! {
            pulled = timed(&app.name, "pull", pull) => pulled,
            () = ctx.cancellation().cancelled() => {
                Err(DockerError::cancelled(&app.name, format!("pull {image}"), false))
            }
        }
    }
}
