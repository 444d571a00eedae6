// A model on disk: a directory in the Hugging Face layout, config.json (see
// ModelConfig) and model.safetensors, both written atomically.
#pragma once

#include "vitrine/models/model.h"

#include <string>

namespace vitrine::models {

/// Writes config.json and model.safetensors into `dir` (created when missing).
void save_model(const VisionModelImpl& model, const std::string& dir);

/// Reads a model directory strictly; a directory that is a Hugging Face export or
/// lacks files gets an error that says what to run.
VisionModel load_model(const std::string& dir);

/// Just the configuration of a model directory.
ModelConfig load_model_config(const std::string& dir);

}  // namespace vitrine::models
