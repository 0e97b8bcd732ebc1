"""Editor integration (`codelm lsp`): a language server that shows the model's completions inline."""
