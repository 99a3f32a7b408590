"""Why a model decided: word attributions, their faithfulness, and pages a person can read.

- `words`: a text cut into words (sub-word tokens summed per word; each Chinese/Japanese character is a word);
- `methods`: the attribution methods (`EXPLAINERS`: integrated gradients, occlusion, SHAP), each scoring every word
  by how much it pushes the model towards the explained label;
- `faithfulness`: comprehensiveness and sufficiency (DeYoung et al., 2020) against random attributions, and the
  agreement between methods;
- `explainer`: explaining texts and files (`explain_texts`, `explain_file`); `page`: the HTML page.
"""
