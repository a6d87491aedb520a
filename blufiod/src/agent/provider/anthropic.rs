//! placeholder
use super::{ChatRequest, Provider, ProviderError, ProviderSettings, StreamEvent};
pub struct Anthropic {
    _settings: ProviderSettings,
}
impl Anthropic {
    pub fn new(settings: ProviderSettings) -> Self {
        Self { _settings: settings }
    }
}
impl Provider for Anthropic {
    fn kind(&self) -> crate::config::ProviderKind {
        crate::config::ProviderKind::Anthropic
    }
    fn stream(&self, _request: ChatRequest) -> tokio::sync::mpsc::Receiver<Result<StreamEvent, ProviderError>> {
        unimplemented!()
    }
}
