//! placeholder
use super::{ChatRequest, Provider, ProviderError, ProviderSettings, StreamEvent};
pub struct OpenAi {
    _settings: ProviderSettings,
}
impl OpenAi {
    pub fn new(settings: ProviderSettings) -> Self {
        Self { _settings: settings }
    }
}
impl Provider for OpenAi {
    fn kind(&self) -> crate::config::ProviderKind {
        crate::config::ProviderKind::Openai
    }
    fn stream(&self, _request: ChatRequest) -> tokio::sync::mpsc::Receiver<Result<StreamEvent, ProviderError>> {
        unimplemented!()
    }
}
