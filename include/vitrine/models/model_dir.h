// A model on disk: a directory in the Hugging Face layout, config.json (see
// ModelConfig) and model.safetensors, written together as one directory.
#pragma once

#include "vitrine/models/model.h"

#include <functional>
#include <string>

namespace vitrine::models {

/// Writes config.json and model.safetensors as the directory `dir`: into a fresh folder
/// beside it, with `dir`'s other files, then swapped in whole. `extra`, when given, writes
/// more files into that folder (its argument) before the swap.
void save_model(const VisionModelImpl& model, const std::string& dir,
                const std::function<void(const std::string& folder)>& extra = nullptr);

/// Reads a model directory strictly; a directory that is a Hugging Face export or
/// lacks files gets an error that says what to run.
VisionModel load_model(const std::string& dir);

/// Just the configuration of a model directory.
ModelConfig load_model_config(const std::string& dir);

}  // namespace vitrine::models
