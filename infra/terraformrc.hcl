# Terraform CLI configuration: hashicorp/aws from the machine's filesystem mirror
# (/opt/tf-plugins on the project's machines), everything else from the registry.
# Scripts point TF_CLI_CONFIG_FILE here.
provider_installation {
  filesystem_mirror {
    path    = "/opt/tf-plugins"
    include = ["registry.terraform.io/hashicorp/aws"]
  }
  direct {
    exclude = ["registry.terraform.io/hashicorp/aws"]
  }
}
