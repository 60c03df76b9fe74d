from tortoise import migrations
from tortoise.migrations import operations as ops
from models.tables import JSONTextField
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('models', '0002_lease_owner_index')]

    initial = False

    operations = [
        ops.AddField(
            model_name='Execution',
            name='input',
            field=JSONTextField(null=True, unique=False),
        ),
        ops.AddField(
            model_name='Execution',
            name='retry_of',
            field=fields.IntField(null=True),
        ),
        ops.AddField(
            model_name='Execution',
            name='triggered_by',
            field=fields.CharField(null=True, max_length=300),
        ),
        ops.AddField(
            model_name='Task',
            name='condition',
            field=fields.TextField(null=True, unique=False),
        ),
        ops.AddField(
            model_name='TaskRun',
            name='condition',
            field=fields.TextField(null=True, unique=False),
        ),
        ops.AddField(
            model_name='TaskRun',
            name='rendered',
            field=JSONTextField(null=True, unique=False),
        ),
    ]
